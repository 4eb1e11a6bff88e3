//! The web UI: static assets compiled into the binary (no CDN, works offline), served under
//! `/ui/`. The pages are in `ui/`; the charting library is uPlot, vendored from npm by
//! `scripts/vendor-ui`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};

const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_bytes!("../ui/index.html"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../ui/app.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_bytes!("../ui/app.css"),
    ),
    (
        "vendor/uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../ui/vendor/uPlot.iife.min.js"),
    ),
    (
        "vendor/uPlot.min.css",
        "text/css; charset=utf-8",
        include_bytes!("../ui/vendor/uPlot.min.css"),
    ),
];

pub async fn root() -> Redirect {
    Redirect::to("/ui/")
}

pub async fn index() -> Response {
    asset("index.html")
}

pub async fn file(axum::extract::Path(path): axum::extract::Path<String>) -> Response {
    asset(&path)
}

fn asset(path: &str) -> Response {
    match ASSETS.iter().find(|(p, _, _)| *p == path) {
        Some((_, mime, bytes)) => {
            let mut r = (*bytes).into_response();
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(mime));
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            r
        }
        None => (StatusCode::NOT_FOUND, format!("no such file: /ui/{path}")).into_response(),
    }
}
