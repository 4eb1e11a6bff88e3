//! The web UI: static assets compiled into the binary (no CDN, works offline), served under
//! `/ui/`. The pages are in `ui/`; the charting library is uPlot, vendored from npm by
//! `scripts/vendor-ui`. The page loads one style sheet and one script, each joined from
//! those files at compile time.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};

/// The page's style sheets as one file (uPlot's, then ours): a page load costs the browser
/// three requests (page, styles, script) rather than five.
const STYLES: &str = concat!(
    include_str!("../ui/vendor/uPlot.min.css"),
    "\n",
    include_str!("../ui/app.css")
);

/// The page's scripts as one file: uPlot (it defines the global `uPlot`), then `app.js` in a
/// function of its own so that its `"use strict"` still opens its body.
const SCRIPT: &str = concat!(
    include_str!("../ui/vendor/uPlot.iife.min.js"),
    "\n;(function () {\n",
    include_str!("../ui/app.js"),
    "\n})();\n"
);

const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_bytes!("../ui/index.html"),
    ),
    (
        "tarn.js",
        "text/javascript; charset=utf-8",
        SCRIPT.as_bytes(),
    ),
    ("tarn.css", "text/css; charset=utf-8", STYLES.as_bytes()),
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
