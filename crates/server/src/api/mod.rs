//! JSON routes and their OpenAPI description.
pub mod admin;
pub mod drift;
pub mod feedback;
pub mod health;
pub mod metrics;
pub mod predict;
pub mod predictions;
pub mod v2;

use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

/// The OpenAPI document served at `/openapi.json` and shown at `/docs`.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "catsdogs",
        description = "Cats-vs-dogs image classification. Every `/api/*` route except `/api/health` needs \
                       `Authorization: Bearer <token>`. Errors are `{\"error\": {\"code\", \"message\"}}`."
    ),
    paths(
        predict::predict,
        predict::predict_batch,
        feedback::feedback,
        metrics::daily,
        metrics::last_7_days,
        drift::drift_report,
        health::api_health,
        health::seed_health,
        health::info,
        predictions::export,
        predictions::erase,
        admin::reload_model,
        admin::list_models,
        drift::rebuild_reference,
        v2::live,
        v2::ready,
        v2::server_metadata,
        v2::model_metadata,
        v2::model_ready,
        v2::infer,
    ),
    components(schemas(
        crate::error::ErrorBody,
        crate::error::ErrorDetail,
        feedback::SeedFeedback,
        feedback::PredictionFeedback,
    )),
    modifiers(&BearerAuth),
    tags(
        (name = "predict", description = "Classify images"),
        (name = "feedback", description = "Say whether a prediction was right"),
        (name = "metrics", description = "Service metrics per day and over 7 days"),
        (name = "health", description = "Liveness, readiness, model information"),
        (name = "inference protocol", description = "Open Inference Protocol (KServe v2) REST: model `catsdogs`"),
        (name = "privacy", description = "Export and erasure of what is held about a prediction (operators)"),
        (name = "admin", description = "Operator actions on the running service"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearer", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
    }
}
