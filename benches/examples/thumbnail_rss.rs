//! How much memory the gateway keeps after decoding large images: decodes `images` large PNGs
//! the way the upload path does (at most `workers` at once, mimalloc as the global allocator)
//! and prints the process's resident set before, at the end, and after idle waits.
//!
//! `cargo run --release -p courier-benches --example thumbnail_rss -- IMAGES SIDE WORKERS MODE [busy]`
//!
//! MODE: `blocking` (tokio's blocking pool, the gateway before), `thread` (a thread per decode),
//! `collect` (a thread per decode that calls `mi_collect` at its end: the gateway now). `busy`
//! keeps small allocations coming and going meanwhile, as the rest of a live node does.
#![allow(unsafe_code)] // mi_collect, as the `courier` binary calls it

use std::io::Cursor;
use std::sync::Arc;
use std::time::Duration;

use courier_gateway::media::detect::ImageKind;
use courier_gateway::media::thumbnail;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const MAX_PIXELS: u64 = 50_000_000;

fn release_freed_memory() {
    // SAFETY: as in the `courier` binary: no pointers, callable from any thread.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    kb / 1024.0
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let number = |i: usize, default: usize| {
        args.get(i)
            .map_or(default, |a| a.parse().expect("a number"))
    };
    let images = number(0, 16);
    let side = number(1, 6000) as u32;
    let workers = number(2, 2);
    let mode = args.get(3).cloned().unwrap_or_else(|| "collect".into());
    let blocking = mode == "blocking";
    let busy = args.get(4).map(String::as_str) == Some("busy");
    let release: Option<fn()> = match mode.as_str() {
        "blocking" | "thread" => None,
        "collect" => Some(release_freed_memory),
        other => panic!("MODE is blocking, thread or collect, not {other}"),
    };
    // Made once by a child process, so that making it leaves nothing in this one's heap.
    let path = std::env::temp_dir().join(format!("courier-thumbnail-rss-{side}.png"));
    if std::env::var_os("THUMBNAIL_RSS_MAKE").is_some() {
        let img = image::RgbaImage::from_fn(side, side, |x, y| {
            image::Rgba([(x % 251) as u8, (y % 241) as u8, ((x ^ y) % 256) as u8, 255])
        });
        let mut png = Cursor::new(Vec::new());
        img.write_to(&mut png, image::ImageFormat::Png).unwrap();
        std::fs::write(&path, png.into_inner()).unwrap();
        return;
    }
    if !path.exists() {
        let made = std::process::Command::new(std::env::current_exe().unwrap())
            .args(&args)
            .env("THUMBNAIL_RSS_MAKE", "1")
            .status()
            .unwrap();
        assert!(made.success());
    }
    let size = std::fs::metadata(&path).unwrap().len();
    println!(
        "{images} decodes of a {side}x{side} PNG ({:.1} MiB), {workers} at once, {mode}{}",
        size as f64 / 1048576.0,
        if busy { ", busy" } else { ", idle" }
    );
    println!("rss at start: {:.0} MiB", rss_mib());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // The rest of a gateway: small allocations come and go on the runtime's threads (the
        // allocator returns freed pages to the system from such calls, a second after the
        // free).
        if busy {
            tokio::spawn(async {
                loop {
                    let held: Vec<Vec<u8>> = (0..64).map(|i| vec![i as u8; 4096]).collect();
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    drop(held);
                }
            });
        }
        let slots = Arc::new(tokio::sync::Semaphore::new(workers));
        let mut tasks = Vec::new();
        for _ in 0..images {
            let path = path.clone();
            let slots = slots.clone();
            tasks.push(tokio::spawn(async move {
                let _slot = slots.acquire().await.unwrap();
                if blocking {
                    let png = tokio::fs::read(&path).await.unwrap();
                    tokio::task::spawn_blocking(move || {
                        thumbnail::thumbnail(&png, ImageKind::Png, MAX_PIXELS)
                    })
                    .await
                    .unwrap()
                } else {
                    thumbnail::thumbnail_file(path, ImageKind::Png, MAX_PIXELS, release).await
                }
                .map(|t| t.thumbnail.len())
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        println!("after the decodes: {:.0} MiB", rss_mib());
        for wait in [1, 5, 15] {
            tokio::time::sleep(Duration::from_secs(wait)).await;
            println!("idle {wait:>2} s more: {:.0} MiB", rss_mib());
        }
    });
}
