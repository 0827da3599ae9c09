//! The training crate's tests, one binary: seed-CNN training, the EfficientNet import and
//! transfer learning, and the shipped models' figures.
mod drift;
mod efficientnet;
mod seed_cnn;
mod shipped;

use catsdogs_testkit::Need::{EffnetCheckpoint, Photos};
use catsdogs_testkit::sync_test;

fn main() -> std::process::ExitCode {
    catsdogs_testkit::run(vec![
        sync_test!(seed_cnn::tiny_run_learns_saves_and_resumes),
        sync_test!(drift::photos_like_the_reference_do_not_alarm_and_their_accuracy_is_estimated).needs(&[Photos]),
        sync_test!(drift::dark_grey_photos_drift_in_input_and_embedding).needs(&[Photos]),
        sync_test!(drift::non_pet_images_drift_in_the_neither_rate_and_embedding),
        sync_test!(seed_cnn::averaged_weights_resume_exactly_and_fine_tuning_starts_from_a_model),
        sync_test!(efficientnet::onnx_graph_matches_candle_reference_and_imagenet).needs(&[EffnetCheckpoint, Photos]),
        sync_test!(efficientnet::shipped_logit_map_matches_the_candle_reference).needs(&[EffnetCheckpoint, Photos]),
        sync_test!(efficientnet::missing_or_misshaped_tensor_is_named).needs(&[EffnetCheckpoint]),
        sync_test!(efficientnet::shipped_default_scores_on_the_validation_split).needs(&[Photos]),
        sync_test!(efficientnet::generated_non_animal_image_is_flagged_neither),
        sync_test!(efficientnet::transfer_run_exports_the_tuned_head).needs(&[EffnetCheckpoint, Photos]),
        sync_test!(efficientnet::pretrained_tail_on_the_trunk_reproduces_the_features)
            .needs(&[EffnetCheckpoint, Photos]),
        sync_test!(shipped::shipped_model_meets_its_card_on_the_validation_split).needs(&[Photos]),
        sync_test!(shipped::training_cache_and_serving_give_identical_pixels),
    ])
}
