//! Server-rendered pages (`/`, `/info`, `/inference`). The token is never rendered:
//! the upload page asks the user for it and keeps it in the tab's session storage.
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use minijinja::{Environment, context};

use crate::state::AppState;

fn env() -> Environment<'static> {
    let mut env = Environment::new();
    for (name, src) in [
        ("base.html", include_str!("../templates/base.html")),
        ("home.html", include_str!("../templates/home.html")),
        ("info.html", include_str!("../templates/info.html")),
        ("inference.html", include_str!("../templates/inference.html")),
    ] {
        if let Err(e) = env.add_template(name, src) {
            tracing::error!(error = %e, template = name, "bad template");
        }
    }
    env
}

fn render(name: &str, ctx: minijinja::Value) -> Response {
    match env().get_template(name).and_then(|t| t.render(ctx)) {
        Ok(html) => Html(html).into_response(),
        Err(e) => {
            tracing::error!(error = %e, template = name, "page rendering failed");
            (StatusCode::INTERNAL_SERVER_ERROR, Html("<h1>Internal error</h1>".to_string())).into_response()
        }
    }
}

pub async fn home(State(state): State<AppState>) -> Response {
    render("home.html", context! { model_loaded => state.model.is_some(), model_version => state.model_version() })
}

pub async fn info(State(state): State<AppState>) -> Response {
    let card = state.model.as_ref().map(|m| minijinja::Value::from_serialize(&m.card));
    render("info.html", context! { card => card, model_error => state.model_error.clone() })
}

pub async fn inference(State(state): State<AppState>) -> Response {
    render("inference.html", context! { max_upload_mib => state.cfg.max_upload_bytes as f64 / 1048576.0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_renders_with_the_shipped_card() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/seed-cnn/model.json");
        let card = catsdogs_model::card::ModelCard::load(&dir).expect("card");
        let env = env();
        let card = minijinja::Value::from_serialize(&card);
        for (name, ctx) in [
            ("home.html", context! { model_loaded => true, model_version => "v" }),
            ("info.html", context! { card => card.clone(), model_error => None::<String> }),
            ("info.html", context! { card => None::<minijinja::Value>, model_error => "missing" }),
            ("inference.html", context! { max_upload_mib => 10.0 }),
        ] {
            let html = env.get_template(name).and_then(|t| t.render(ctx));
            assert!(html.is_ok(), "{name}: {html:?}");
        }
    }
}
