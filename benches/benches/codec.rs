//! Encode and decode throughput of the hot frames (Send in, Deliver out), plus the streaming
//! decoder over a buffer of many frames.

use bytes::BytesMut;
use courier_benches::{deliver_frame, send_frame};
use courier_wire::{Frame, FrameDecoder, HEADER_LEN};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use std::hint::black_box;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("codec");
    for (name, frame) in [
        ("send_100B", send_frame(100)),
        ("deliver_100B", deliver_frame(100)),
    ] {
        g.throughput(Throughput::Elements(1));
        let mut buf = Vec::with_capacity(1024);
        g.bench_function(format!("encode/{name}"), |b| {
            b.iter(|| {
                buf.clear();
                black_box(&frame).encode(&mut buf);
                black_box(buf.len())
            })
        });
        let bytes = frame.to_bytes();
        g.bench_function(format!("decode/{name}"), |b| {
            b.iter(|| Frame::decode_body(bytes[0], black_box(bytes.slice(HEADER_LEN..))).unwrap())
        });
    }

    // 1024 frames back to back, as a read from the network would hand them over.
    let one = send_frame(100).to_bytes();
    let stream: Vec<u8> = one.iter().copied().cycle().take(one.len() * 1024).collect();
    g.throughput(Throughput::Elements(1024));
    g.bench_function("stream_decode/1024x_send_100B", |b| {
        let decoder = FrameDecoder::new(64 * 1024);
        b.iter_batched(
            || BytesMut::from(&stream[..]),
            |mut buf| {
                let mut n = 0;
                while let Some(f) = decoder.decode(&mut buf).unwrap() {
                    black_box(f);
                    n += 1;
                }
                assert_eq!(n, 1024);
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
