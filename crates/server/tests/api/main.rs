//! The HTTP service's tests, one binary (`harness = false`, run by catsdogs-testkit): the
//! real app on an ephemeral loopback port per test ([`helpers::TestApp`]), one behaviour
//! per test. Tests that need PostgreSQL, Chromium, schemathesis, tritonclient or the
//! photos declare it and are reported as ignored, with the reason, where it is missing.
mod auth;
mod batch;
mod browser;
mod contract;
mod drift;
mod feedback;
mod gdpr;
mod grpc;
mod health;
mod helpers;
mod hostile;
mod images;
mod metrics;
mod outage;
mod pages;
mod predict;
mod reload;
mod retention;
mod routes;
mod telemetry;
mod v2;

use catsdogs_testkit::Need::{Chromium, Photos, Postgres, Schemathesis, Triton};
use catsdogs_testkit::{async_test, sync_test};

fn main() -> std::process::ExitCode {
    catsdogs_testkit::run(vec![
        // Health and model information.
        async_test!(health::sqlite::readiness_reports_the_model_and_a_reachable_store),
        async_test!(health::postgres::readiness_reports_the_model_and_a_reachable_store).needs(&[Postgres]),
        async_test!(health::the_seed_health_route_says_healthy_with_the_model_loaded),
        async_test!(health::info_describes_the_loaded_model),
        async_test!(health::info_is_public_with_the_seed_fields_and_no_path),
        async_test!(health::a_sqlite_url_to_a_new_file_becomes_ready),
        async_test!(health::a_database_url_that_can_never_work_fails_at_start),
        async_test!(health::a_token_shorter_than_16_characters_is_refused_at_start),
        async_test!(health::a_missing_model_is_explained_without_any_absolute_path),
        // Authentication.
        async_test!(auth::a_request_without_a_token_is_401_with_a_bearer_challenge),
        async_test!(auth::a_wrong_scheme_or_token_is_401_unauthorized),
        async_test!(auth::operator_routes_are_closed_without_a_token),
        async_test!(auth::both_rotated_tokens_are_accepted),
        async_test!(auth::every_protected_route_refuses_bad_credentials),
        async_test!(auth::the_public_routes_stay_public),
        // Prediction.
        async_test!(drift::drift_reports_a_window_of_real_photos_and_catches_non_pets).needs(&[Photos]),
        async_test!(drift::an_operator_rebuilds_the_reference_from_served_predictions).needs(&[Photos]),
        async_test!(drift::sqlite::the_dashboard_reuses_closed_days_and_recounts_their_feedback).needs(&[Photos]),
        async_test!(drift::postgres::the_dashboard_reuses_closed_days_and_recounts_their_feedback)
            .needs(&[Photos, Postgres]),
        async_test!(predict::predict_answers_with_the_seed_fields_and_ours),
        async_test!(predict::explain_adds_the_map_and_the_crop_only_when_asked),
        async_test!(predict::the_seed_cnn_explains_over_the_whole_photo),
        async_test!(predict::sqlite::the_stored_row_holds_a_pseudonym_not_the_file_name),
        async_test!(predict::postgres::the_stored_row_holds_a_pseudonym_not_the_file_name).needs(&[Postgres]),
        async_test!(predict::every_format_is_sniffed_from_its_content_whatever_name_and_type),
        async_test!(predict::a_text_file_is_refused_with_400_unsupported_media_type),
        async_test!(predict::a_truncated_image_is_refused_with_422),
        async_test!(predict::an_empty_file_is_refused_with_400),
        async_test!(predict::a_file_over_the_size_limit_is_refused_with_413),
        async_test!(predict::a_form_without_a_file_is_refused_with_400),
        async_test!(predict::a_json_body_is_refused_with_415),
        // Batches.
        async_test!(batch::a_bad_file_does_not_fail_the_others_in_a_batch),
        async_test!(batch::a_batch_over_the_file_limit_is_refused_with_413),
        async_test!(batch::a_full_inference_queue_refuses_files_with_503_overloaded),
        // Feedback.
        async_test!(feedback::sqlite::feedback_on_a_prediction_is_saved),
        async_test!(feedback::postgres::feedback_on_a_prediction_is_saved).needs(&[Postgres]),
        async_test!(feedback::sqlite::a_second_feedback_replaces_the_first),
        async_test!(feedback::postgres::a_second_feedback_replaces_the_first).needs(&[Postgres]),
        async_test!(feedback::sqlite::feedback_on_a_batch_prediction_is_saved),
        async_test!(feedback::postgres::feedback_on_a_batch_prediction_is_saved).needs(&[Postgres]),
        async_test!(feedback::sqlite::feedback_on_an_unknown_prediction_is_404),
        async_test!(feedback::postgres::feedback_on_an_unknown_prediction_is_404).needs(&[Postgres]),
        async_test!(feedback::sqlite::the_seeds_feedback_body_gets_the_seeds_answer),
        async_test!(feedback::postgres::the_seeds_feedback_body_gets_the_seeds_answer).needs(&[Postgres]),
        async_test!(feedback::feedback_without_a_verdict_or_with_two_is_422),
        async_test!(feedback::an_unknown_seed_verdict_or_body_is_422),
        async_test!(feedback::malformed_feedback_json_is_400),
        async_test!(feedback::feedback_as_text_plain_is_415),
        async_test!(feedback::abusive_feedback_values_are_refused_and_inject_nothing),
        async_test!(feedback::unreadable_feedback_bodies_are_400),
        sync_test!(feedback::feedback_fuzz_inputs_are_accepted_or_refused_with_a_4xx),
        // Business metrics.
        async_test!(metrics::sqlite::daily_metrics_count_every_prediction_and_feedback),
        async_test!(metrics::postgres::daily_metrics_count_every_prediction_and_feedback).needs(&[Postgres]),
        async_test!(metrics::sqlite::daily_metrics_on_known_rows),
        async_test!(metrics::postgres::daily_metrics_on_known_rows).needs(&[Postgres]),
        async_test!(metrics::sqlite::window_metrics_on_known_rows),
        async_test!(metrics::postgres::window_metrics_on_known_rows).needs(&[Postgres]),
        async_test!(metrics::sqlite::sql_metrics_match_the_reference_definition_on_random_rows),
        async_test!(metrics::postgres::sql_metrics_match_the_reference_definition_on_random_rows).needs(&[Postgres]),
        // Documentation and routing.
        async_test!(routes::the_swagger_ui_is_served),
        async_test!(routes::the_openapi_document_lists_every_api_route),
        async_test!(routes::an_unknown_api_route_is_a_json_404),
        async_test!(routes::a_wrong_method_is_a_json_405),
        // A database outage.
        async_test!(outage::predictions_answer_while_the_database_is_down_and_feedback_is_503).needs(&[Postgres]),
        async_test!(outage::readiness_reports_the_outage_and_the_queued_row_is_written_after_it).needs(&[Postgres]),
        async_test!(outage::rows_queued_at_shutdown_are_written_by_the_next_start).needs(&[Postgres]),
        async_test!(outage::erasure_during_an_outage_removes_nothing_and_a_retry_after_it_removes_everything)
            .needs(&[Postgres]),
        // Hostile input.
        async_test!(hostile::hostile_uploads_get_their_documented_status),
        async_test!(hostile::odd_file_names_are_accepted),
        async_test!(hostile::a_raw_invalid_utf8_file_name_is_answered_or_refused_with_400),
        async_test!(hostile::bodies_that_are_not_what_they_claim_are_refused),
        async_test!(hostile::thousands_of_ignored_fields_cost_nothing),
        async_test!(hostile::a_batch_of_far_too_many_files_is_refused_with_413),
        async_test!(hostile::a_200_mib_upload_is_cut_at_the_limit_with_bounded_memory),
        async_test!(hostile::a_stalled_upload_is_cut_by_the_request_deadline_with_408),
        async_test!(hostile::slowloris_clients_are_cut_off_and_do_not_stop_others),
        async_test!(hostile::rapid_visitor_predictions_see_429_with_retry_after),
        async_test!(hostile::wrong_sign_ins_are_locked_out_and_the_right_token_works_after_the_delay),
        async_test!(hostile::a_visitor_gives_feedback_only_on_its_own_predictions),
        async_test!(hostile::visitor_requests_are_smaller_than_token_requests),
        async_test!(hostile::the_upload_budget_is_shared_by_all_requests),
        async_test!(hostile::consented_images_beyond_the_quotas_are_not_kept),
        async_test!(hostile::no_file_the_service_writes_is_readable_by_others),
        async_test!(hostile::forwarded_for_from_an_untrusted_peer_does_not_dodge_the_limit),
        async_test!(hostile::settings_that_cannot_work_are_refused_at_start),
        async_test!(hostile::a_sixteen_bit_png_bomb_is_refused_before_decoding),
        // Prometheus and request ids.
        async_test!(telemetry::prometheus_metrics_need_the_token),
        async_test!(telemetry::prometheus_counters_move_with_known_requests),
        async_test!(telemetry::every_answer_carries_a_request_id),
        async_test!(telemetry::a_request_id_chosen_by_the_client_is_echoed),
        async_test!(telemetry::a_request_id_that_is_not_a_short_token_is_replaced),
        // Privacy.
        async_test!(gdpr::concurrent_predictions_write_one_log_line_each_with_its_own_latency),
        async_test!(gdpr::the_raw_file_name_is_echoed_but_stored_and_logged_nowhere),
        async_test!(gdpr::export_is_for_operators),
        async_test!(gdpr::export_returns_the_row_its_feedback_and_its_log_line),
        async_test!(gdpr::erasure_removes_every_trace_of_the_id_and_keeps_the_others),
        async_test!(gdpr::token_set_export_and_erasure_are_audited_without_the_token),
        async_test!(retention::the_purge_keeps_exactly_what_is_younger_than_the_retention_on_sqlite),
        async_test!(retention::the_purge_keeps_exactly_what_is_younger_than_the_retention_on_postgres)
            .needs(&[Postgres]),
        async_test!(retention::one_replica_at_a_time_holds_the_purge_lock_on_postgres).needs(&[Postgres]),
        async_test!(images::without_consent_no_image_is_kept),
        async_test!(images::a_consented_image_is_one_content_addressed_file_outside_the_database),
        async_test!(images::feedback_turns_a_kept_image_into_a_training_example),
        async_test!(images::a_kept_image_goes_with_the_last_prediction_holding_it),
        async_test!(images::the_purge_removes_the_images_of_the_predictions_it_deletes),
        // Hot reload.
        async_test!(reload::reload_swaps_the_model_under_load_without_failures),
        async_test!(reload::a_reload_is_audited_with_both_versions),
        async_test!(reload::a_directory_without_a_model_is_refused_and_the_old_model_keeps_serving),
        async_test!(reload::reloading_and_listing_models_need_the_token),
        async_test!(reload::the_registry_listing_names_the_loaded_version_and_is_audited),
        async_test!(reload::every_answer_names_the_model_that_computed_it_across_reloads),
        // Open Inference Protocol.
        async_test!(v2::v2_health_is_public),
        async_test!(v2::v2_model_metadata_needs_the_token_and_names_the_cards_version),
        async_test!(v2::an_unknown_v2_model_is_404),
        async_test!(v2::json_bytes_inputs_are_classified_like_api_predict),
        async_test!(v2::explain_adds_evidence_and_crop_outputs),
        async_test!(v2::binary_bytes_inputs_agree_with_json_inputs),
        async_test!(v2::uint8_json_pixels_and_fp32_binary_pixels_agree),
        async_test!(v2::malformed_inference_requests_get_the_protocol_error_shape),
        async_test!(v2::huge_shapes_are_refused_before_anything_is_allocated),
        async_test!(v2::unparseable_json_and_a_header_length_beyond_the_body_are_400),
        async_test!(v2::protocol_inferences_are_stored_like_api_predictions),
        async_test!(v2::tritonclient_works_against_the_shipped_model).needs(&[Triton, Photos]),
        async_test!(grpc::grpc_health_is_public_and_everything_else_needs_the_token),
        async_test!(grpc::grpc_inference_agrees_with_rest_and_stores_rows),
        async_test!(grpc::grpc_explain_adds_evidence_and_crop),
        async_test!(grpc::a_file_over_four_mib_goes_through_and_one_over_the_upload_limit_does_not),
        async_test!(grpc::a_taken_explicit_address_fails_the_start_and_a_taken_default_only_warns),
        async_test!(grpc::tritonclient_grpc_works_against_the_shipped_model).needs(&[Triton, Photos]),
        // The web page, server side.
        async_test!(pages::every_page_renders_without_the_token),
        async_test!(pages::the_first_view_issues_a_hardened_session_cookie_under_a_strict_csp),
        async_test!(pages::the_session_and_its_csrf_token_are_stable),
        async_test!(pages::the_static_assets_are_served),
        async_test!(pages::the_api_accepts_a_session_only_with_its_csrf_token),
        async_test!(pages::a_csrf_token_without_its_session_cookie_is_refused),
        async_test!(pages::a_visitor_session_does_not_open_the_metrics),
        async_test!(pages::the_plain_form_needs_the_csrf_token),
        async_test!(pages::the_plain_form_shows_each_file_with_its_name_escaped),
        async_test!(pages::the_plain_feedback_form_saves_with_the_csrf_token_only),
        async_test!(pages::the_dashboard_sends_visitors_to_sign_in),
        async_test!(pages::sign_in_refuses_a_wrong_token_or_a_forged_csrf_token),
        async_test!(pages::sign_in_is_audited_and_never_redirects_off_site),
        async_test!(pages::the_dashboard_shows_its_charts_and_pseudonyms_only),
        async_test!(pages::an_operator_session_has_a_new_csrf_token_and_reads_the_metrics),
        async_test!(pages::signing_out_returns_to_a_visitor_session),
        // The web page in Chromium.
        async_test!(browser::the_page_runs_its_script_and_never_holds_the_token).needs(&[Chromium, Photos]),
        async_test!(browser::each_uploaded_photo_gets_a_card_with_its_own_label).needs(&[Chromium, Photos]),
        async_test!(browser::feedback_buttons_confirm_and_mark_only_their_own_card).needs(&[Chromium, Photos]),
        async_test!(browser::a_dropped_text_file_fails_alone).needs(&[Chromium, Photos]),
        async_test!(browser::a_hostile_file_name_is_shown_as_text).needs(&[Chromium, Photos]),
        async_test!(browser::the_home_page_fits_a_phone_screen).needs(&[Chromium, Photos]),
        async_test!(browser::why_draws_the_heatmap_over_the_preview).needs(&[Chromium, Photos]),
        async_test!(browser::a_wrong_answer_on_a_kept_photo_links_its_heatmap_on_the_dashboard)
            .needs(&[Chromium, Photos]),
        async_test!(browser::the_dashboard_counts_the_verdicts_after_sign_in).needs(&[Chromium, Photos]),
        async_test!(browser::the_api_docs_render_under_their_csp).needs(&[Chromium, Photos]),
        // The OpenAPI contract, checked by schemathesis.
        async_test!(contract::the_openapi_contract_holds_under_schemathesis).needs(&[Schemathesis]),
    ])
}
