//! The model crate's tests, one binary: the shared preprocessing path.
mod preprocess;

use catsdogs_testkit::sync_test;

fn main() -> std::process::ExitCode {
    catsdogs_testkit::run(vec![
        sync_test!(preprocess::every_supported_format_decodes_to_rgb),
        sync_test!(preprocess::grey_sixteen_bit_and_alpha_become_rgb),
        sync_test!(preprocess::cmyk_jpeg_decodes_to_rgb),
        sync_test!(preprocess::animated_gif_uses_the_first_frame),
        sync_test!(preprocess::exif_orientation_is_applied),
        sync_test!(preprocess::bad_inputs_are_typed_errors),
        sync_test!(preprocess::no_prefix_or_bit_flip_panics),
        sync_test!(preprocess::any_shape_becomes_the_model_input_size),
        sync_test!(preprocess::fuzz_corpus_and_regressions_replay_without_panics),
        sync_test!(preprocess::jpegs_decode_at_the_smallest_scale_the_geometry_allows),
        sync_test!(preprocess::a_decode_over_the_memory_limit_is_refused_before_decoding),
    ])
}
