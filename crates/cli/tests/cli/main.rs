//! The `catsdogs` binary's tests, one binary: the offline commands (predict, eval,
//! export), the data and database commands, the deployment files, the model registry,
//! the retraining loop, two replicas on PostgreSQL, OpenTelemetry export, and load with
//! faults.
mod commands;
mod data_export;
mod deploy;
mod helpers;
mod load;
mod registry;
mod replicas;
mod retrain;
mod traces;

use catsdogs_testkit::Need::{EffnetCheckpoint, K8sValidate, Photos, Postgres};
use catsdogs_testkit::{async_test, sync_test};

fn main() -> std::process::ExitCode {
    let code = catsdogs_testkit::run(vec![
        sync_test!(commands::predict_on_onnxruntime_reports_a_bad_file_and_keeps_going),
        sync_test!(commands::predict_on_candle_reports_a_bad_file_and_keeps_going),
        sync_test!(commands::predict_json_with_the_default_model_says_whether_it_is_a_cat_or_dog),
        sync_test!(commands::eval_prints_accuracy_roc_auc_and_the_image_count),
        sync_test!(commands::eval_writes_the_confusion_matrix_roc_curve_and_reliability_plots),
        sync_test!(commands::export_writes_the_committed_onnx_graph_from_the_committed_weights),
        sync_test!(commands::reference_writes_the_drift_reference_next_to_the_card),
        async_test!(data_export::data_export_writes_consented_judged_uploads_into_label_folders),
        async_test!(data_export::data_export_manifest_dates_each_example_oldest_first),
        async_test!(data_export::db_erase_by_id_removes_the_kept_image),
        async_test!(data_export::db_purge_removes_rows_past_the_retention_and_keeps_younger_ones),
        async_test!(data_export::db_erase_before_a_date_removes_older_rows_and_keeps_younger_ones),
        sync_test!(deploy::kubernetes_manifests_match_the_api_schemas).needs(&[K8sValidate]),
        sync_test!(deploy::kubernetes_probes_point_at_routes_the_server_has),
        sync_test!(deploy::kubernetes_replicas_share_one_read_write_many_folder),
        sync_test!(deploy::kubernetes_secret_holds_every_key_and_is_mounted_at_the_secrets_dir),
        sync_test!(deploy::kserve_example_is_an_inference_service),
        sync_test!(deploy::dockerfile_is_multi_stage_non_root_and_ships_the_default_model),
        sync_test!(deploy::compose_runs_two_apps_a_database_and_a_proxy),
        sync_test!(deploy::nginx_balances_both_apps),
        sync_test!(registry::models_add_takes_a_version_once),
        sync_test!(registry::models_promote_refuses_unknown_and_path_like_names),
        sync_test!(registry::models_list_stars_the_promoted_version),
        async_test!(registry::a_server_on_the_registry_follows_a_promotion_on_sighup),
        async_test!(registry::a_rollback_is_served_after_the_admin_reload_and_logged),
        sync_test!(registry::the_gate_refuses_a_barely_trained_candidate).needs(&[Photos]),
        sync_test!(registry::the_gate_passes_a_copy_of_the_current_model).needs(&[Photos]),
        sync_test!(retrain::retrain_loop_every_consented_upload_is_kept),
        sync_test!(retrain::retrain_loop_the_server_lists_its_one_promoted_loaded_version),
        sync_test!(retrain::retrain_loop_the_export_holds_every_labelled_upload),
        sync_test!(retrain::retrain_prints_a_report_table_of_candidate_and_parent),
        sync_test!(retrain::retrain_candidate_card_records_its_lineage),
        sync_test!(retrain::retrain_candidate_has_its_own_drift_reference),
        sync_test!(retrain::retrain_promotes_nothing),
        sync_test!(retrain::retrain_report_scores_both_models_on_the_same_sets),
        sync_test!(retrain::retrain_holds_out_the_newest_feedback),
        sync_test!(retrain::retrain_report_keeps_no_prediction_ids),
        sync_test!(retrain::retrain_writes_roc_plots_and_the_markdown_report),
        sync_test!(retrain::models_list_shows_the_candidate_lineage),
        async_test!(retrain::admin_api_lists_the_candidate_beside_its_unpromoted_parent),
        sync_test!(retrain::retrain_scores_a_one_example_holdout_without_a_roc_curve),
        sync_test!(retrain::retrain_names_a_base_missing_from_the_registry),
        sync_test!(retrain::retrain_without_an_exported_feedback_set_says_how_to_make_one),
        sync_test!(retrain::efficientnet_retrain_card_records_the_architecture_and_lineage)
            .needs(&[Photos, EffnetCheckpoint]),
        sync_test!(retrain::efficientnet_retrain_holds_out_the_two_newest_days).needs(&[Photos, EffnetCheckpoint]),
        sync_test!(retrain::efficientnet_candidate_and_parent_classify_held_out_real_photos)
            .needs(&[Photos, EffnetCheckpoint]),
        sync_test!(retrain::efficientnet_retrain_exports_onnx_and_the_feedback_roc_curve)
            .needs(&[Photos, EffnetCheckpoint]),
        async_test!(replicas::replicas_starting_together_apply_each_migration_once).needs(&[Postgres]),
        async_test!(replicas::a_prediction_on_one_replica_is_judged_through_the_other).needs(&[Postgres]),
        async_test!(replicas::replicas_report_identical_daily_and_7_day_metrics).needs(&[Postgres]),
        async_test!(replicas::killing_a_replica_under_load_loses_none_of_its_acknowledged_writes).needs(&[Postgres]),
        async_test!(replicas::the_other_replica_answers_every_request_while_one_is_killed).needs(&[Postgres]),
        async_test!(replicas::an_erasure_through_one_replica_reaches_what_the_other_holds).needs(&[Postgres]),
        async_test!(data_export::db_erase_removes_a_row_spilled_during_an_outage_for_good).needs(&[Postgres]),
        async_test!(traces::otlp_grpc_receives_a_predict_under_the_callers_span_with_its_stages),
        async_test!(traces::otlp_http_protobuf_is_the_default_protocol),
        async_test!(traces::without_an_otlp_endpoint_the_answer_carries_no_traceparent),
        async_test!(load::sqlite_rows_match_every_answer_under_load),
        async_test!(load::sqlite_kill_9_under_load_loses_no_acknowledged_write),
        async_test!(load::postgres_outage_under_load_queues_rows_and_loses_none).needs(&[Postgres]),
    ]);
    helpers::remove_shared_fixtures();
    code
}
