//! `POST /api/feedback` bodies: every input is accepted or refused with a 4xx and a
//! stable error code, never a panic or a 5xx.
#![no_main]
use catsdogs_server::api::feedback::{ParsedFeedback, parse_feedback};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for content_type in [None, Some("application/json"), Some("text/plain")] {
        match parse_feedback(content_type, data) {
            Ok(ParsedFeedback::Prediction(checked)) => {
                // The label is a `Label` by type: only "cat" or "dog" can get this far.
                assert!(checked.correct.is_some() || checked.label.is_some());
                assert_eq!(checked.prediction_id.as_str().parse().ok(), Some(checked.prediction_id.clone()));
            }
            Ok(ParsedFeedback::Seed { body, .. }) => {
                assert!(body.resultat_prediction.is_none_or(|p| (0.0..=1.0).contains(&p)));
            }
            Err(e) => {
                assert!(e.status.is_client_error(), "{} for {:?}", e.status, String::from_utf8_lossy(data));
                assert!(!e.code.is_empty());
            }
        }
    }
});
