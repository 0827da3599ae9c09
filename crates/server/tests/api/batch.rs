//! `POST /api/predict/batch`: per-file results, the file limit, and a full inference queue.
use std::time::Duration;

use image::ImageFormat;
use reqwest::StatusCode;

use crate::helpers::{MAX_BATCH, TestApp, error_code, image_bytes, pct, pngs};

pub async fn a_bad_file_does_not_fail_the_others_in_a_batch() {
    let app = TestApp::spawn().await;
    let b = app
        .batch(vec![
            ("a.png".into(), image_bytes(ImageFormat::Png)),
            ("b.txt".into(), b"not an image".to_vec()),
            ("c.jpg".into(), image_bytes(ImageFormat::Jpeg)),
        ])
        .await;
    let statuses: Vec<u16> = b.results.iter().map(|i| i.status).collect();
    assert_eq!(statuses, [200, 400, 200]);
    assert_eq!((b.succeeded, b.failed), (2, 1));
    assert_eq!(b.results[1].error.as_ref().map(|e| e.code.as_str()), Some("unsupported_media_type"));
    let first = b.results[0].result.as_ref().expect("first result");
    assert_eq!(first.probabilities.dog, pct(first.p_dog));
    app.stop().await;
}

pub async fn a_batch_over_the_file_limit_is_refused_with_413() {
    let app = TestApp::spawn().await;
    let r = app.post_batch(pngs(MAX_BATCH + 1)).await;
    assert_eq!(error_code(r, StatusCode::PAYLOAD_TOO_LARGE).await, "too_many_files");
    app.stop().await;
}

/// A full inference queue refuses at once with 503 and the `overloaded` code, per file,
/// instead of queueing without bound; the service recovers at once.
pub async fn a_full_inference_queue_refuses_files_with_503_overloaded() {
    let app = TestApp::spawn_with(|cfg| {
        // One image per forward pass and room for one more: a batch upload overflows.
        cfg.batching.max_batch = 1;
        cfg.batching.max_wait = Duration::ZERO;
        cfg.batching.queue_capacity = 1;
    })
    .await;
    let mut refused = 0;
    for _ in 0..5 {
        let body = app.batch(pngs(MAX_BATCH)).await;
        for item in &body.results {
            match item.status {
                200 => assert!(item.result.is_some(), "{item:?}"),
                503 => {
                    assert_eq!(item.error.as_ref().map(|e| e.code.as_str()), Some("overloaded"), "{item:?}");
                    refused += 1;
                }
                other => panic!("unexpected per-file status {other:?}: {item:?}"),
            }
        }
    }
    assert!(refused > 0, "a queue of one never overflowed under batch uploads");
    // The queue is free again: a single upload works.
    app.predict("ok.png").await;
    app.stop().await;
}
