//! The serving engine's tests, one binary: the backends against each other, and the
//! engine's answers through reloads.
mod backends;
mod decode;
mod engine;
mod explain;

use catsdogs_testkit::Need::Photos;
use catsdogs_testkit::{async_test, sync_test};

fn main() -> std::process::ExitCode {
    catsdogs_testkit::run(vec![
        sync_test!(backends::backends_agree_on_real_photos).needs(&[Photos]),
        sync_test!(backends::backends_agree_on_generated_images_and_batch_sizes),
        sync_test!(backends::bad_inputs_and_missing_files_are_typed_errors),
        sync_test!(backends::test_time_flip_averages_the_image_and_its_mirror),
        sync_test!(backends::warm_up_runs_every_batch_size_the_batcher_sends_and_changes_no_answer),
        async_test!(engine::answers_carry_the_version_of_the_model_that_computed_them),
        async_test!(engine::a_bad_input_fails_alone),
        async_test!(engine::without_a_model_every_request_says_why),
        sync_test!(engine::a_drift_reference_of_another_version_is_not_used),
        sync_test!(explain::the_logit_map_mean_is_the_answers_logit_on_both_graphs_and_candle).needs(&[Photos]),
        sync_test!(explain::the_mirrored_map_is_flipped_back_under_test_time_flip).needs(&[Photos]),
        sync_test!(explain::a_card_without_declared_outputs_loads_without_maps),
        async_test!(explain::the_map_points_at_the_quadrant_holding_the_animal).needs(&[Photos]),
        sync_test!(decode::scaled_decoding_of_12_megapixel_photos_keeps_the_answers).needs(&[Photos]),
        async_test!(decode::decode_memory_is_bounded_across_requests),
    ])
}
