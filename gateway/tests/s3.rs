//! The S3 blob store against a running S3-compatible server: a build with `--features s3` and
//! `COURIER_S3_ENDPOINT` naming the server (`.ci/run` starts moto's S3 server on 127.0.0.1 and
//! sets it, with `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and `AWS_REGION` for the
//! request signing); without the variable the test says it was skipped.

#![cfg(feature = "s3")]

mod common;

use std::time::Duration;

use common::{next_message, noise, png, send_attached, upload, TestServer};
use courier_gateway::media::BlobStoreConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_and_thumbnails_round_trip_through_an_s3_compatible_server() {
    let Ok(endpoint) = std::env::var("COURIER_S3_ENDPOINT") else {
        eprintln!("skipped: COURIER_S3_ENDPOINT is not set, so the S3 blob store test did not run");
        return;
    };
    // A fresh bucket (the server is a test server: a plain PUT creates it).
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let bucket = format!("courier-test-{nanos}");
    let made = reqwest::Client::new()
        .put(format!("{endpoint}/{bucket}"))
        .send()
        .await
        .unwrap();
    assert!(
        made.status().is_success(),
        "create bucket: {}",
        made.status()
    );

    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(dir.path(), |c| {
        c.media.blobs = BlobStoreConfig::S3 {
            bucket: bucket.clone(),
            endpoint: Some(endpoint.clone()),
        };
    })
    .await;
    let (alice, _a) = server.connect("alice", 1).await;
    let (bob, mut b) = server.connect("bob", 1).await;
    let chat = alice.create_direct_chat("bob").await.unwrap().chat_id;

    // An image (stored with its thumbnail) and 3 MiB of bytes, both through S3.
    let image = bytes::Bytes::from(png(640, 480));
    let photo = upload(&alice, image.clone()).await;
    let thumb = photo.thumbnail_id.expect("an image gets a thumbnail");
    let blob = noise(3 << 20, 7);
    let file = upload(&alice, blob.clone()).await;
    send_attached(&alice, chat, vec![photo.clone(), file.clone()]).await;
    assert_eq!(next_message(&mut b).await.attachments.len(), 2);
    let (_, got) = bob.download(photo.media_id, 0, 0).await.unwrap();
    assert_eq!(got, image);
    let (info, got) = bob.download(thumb, 0, 0).await.unwrap();
    assert!(info.content_type.starts_with("image/") && !got.is_empty());
    let (_, got) = bob.download(file.media_id, 0, 0).await.unwrap();
    assert_eq!(got, blob);
    // A range read, as a resumed download makes.
    let (_, part) = bob.download(file.media_id, 1 << 20, 1000).await.unwrap();
    assert_eq!(part, blob.slice((1 << 20)..(1 << 20) + 1000));
    tokio::time::timeout(Duration::from_secs(10), server.gateway.shutdown())
        .await
        .unwrap();
}
