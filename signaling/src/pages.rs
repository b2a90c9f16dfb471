//! The browser SDK and the demo pages, served by the node itself: `/` (the player: device
//! list, low-latency playback, keyboard and gamepad input), `/device` (publishes a camera,
//! screen or test pattern), `/sdk/meridian.js` (the SDK) and their assets under `/assets/`.
//!
//! Every file is compiled into the binary (`include_str!`): nothing is read from disk at run
//! time and nothing is loaded from elsewhere. Responses say `Cache-Control: no-cache`, so a
//! browser revalidates them and picks up a new node version at once.

use std::sync::Arc;

use axum::http::{header, HeaderName, HeaderValue};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "application/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const SVG: &str = "image/svg+xml";

/// Scripts and styles only from the node itself; connections also to other regions' nodes
/// (the SDK's `/v1/ping` measuring fallback and its WebSocket to the best-ranked region);
/// media elements play MediaStreams, which need no source.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
                   connect-src 'self' ws: wss: http: https:; img-src 'self' data:; media-src 'self' blob:; \
                   object-src 'none'; base-uri 'none'";

/// (path, content type, body) of every embedded file.
const FILES: &[(&str, &str, &str)] = &[
    ("/", HTML, include_str!("../web/index.html")),
    ("/device", HTML, include_str!("../web/device.html")),
    ("/sdk/meridian.js", JS, include_str!("../web/meridian.js")),
    ("/assets/player.js", JS, include_str!("../web/player.js")),
    ("/assets/device.js", JS, include_str!("../web/device.js")),
    ("/assets/style.css", CSS, include_str!("../web/style.css")),
    (
        "/assets/favicon.svg",
        SVG,
        include_str!("../web/favicon.svg"),
    ),
];

/// The page and SDK routes, merged into the API router.
pub fn routes() -> Router<Arc<crate::Signaling>> {
    pages()
}

/// The routes for any router state (they use none).
fn pages<S: Clone + Send + Sync + 'static>() -> Router<S> {
    let mut r = Router::new();
    for &(path, content_type, body) in FILES {
        r = r.route(path, get(move || async move { file(content_type, body) }));
    }
    r
}

fn file(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    let mut headers = vec![
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
    ];
    if content_type == HTML {
        headers.push((
            HeaderName::from_static("content-security-policy"),
            HeaderValue::from_static(CSP),
        ));
    }
    (axum::http::HeaderMap::from_iter(headers), body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// GET `path` from `addr` over plain HTTP/1.1; returns (status line, headers, body).
    fn get_blocking(addr: std::net::SocketAddr, path: &str) -> (String, String, String) {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
        (status.into(), headers.to_ascii_lowercase(), body.into())
    }

    #[tokio::test]
    async fn serves_every_file_with_its_type_and_no_cache() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(listener, pages::<()>()).await.unwrap();
        });
        let results = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            for &(path, ct, body) in FILES {
                out.push((path, ct, body, get_blocking(addr, path)));
            }
            out.push(("/nope", "", "", get_blocking(addr, "/nope")));
            out
        })
        .await
        .unwrap();
        for (path, ct, body, (status, headers, got)) in results {
            if path == "/nope" {
                assert!(status.contains(" 404 "), "{path}: {status}");
                continue;
            }
            assert!(status.contains(" 200 "), "{path}: {status}");
            assert!(
                headers.contains(&format!("content-type: {ct}")),
                "{path}: {headers}"
            );
            assert!(
                headers.contains("cache-control: no-cache"),
                "{path}: {headers}"
            );
            // Chunked or not, the body is in there.
            assert!(
                got.contains(&body[..body.len().min(200)]),
                "{path}: body differs"
            );
        }
    }

    #[test]
    fn every_local_reference_is_served() {
        // Paths the pages and scripts load (src=, href=, import … from), resolved against
        // the file that names them, must be routes; and nothing comes from another host.
        let routes: Vec<&str> = FILES.iter().map(|f| f.0).collect();
        for &(path, _, body) in FILES {
            let dir = &path[..=path.rfind('/').unwrap()];
            for pat in ["src=\"", "href=\"", "from '"] {
                for part in body.split(pat).skip(1) {
                    let end = part.find(['"', '\'']).unwrap();
                    let r = &part[..end];
                    assert!(
                        !r.contains("//"),
                        "{path} loads {r} from elsewhere: everything is served by the node"
                    );
                    if r.starts_with('#') || r.is_empty() {
                        continue;
                    }
                    let resolved = resolve(dir, r);
                    assert!(
                        routes.contains(&resolved.as_str()),
                        "{path} references {r} ({resolved}), which is not served"
                    );
                }
            }
        }
    }

    /// A relative reference against a directory path (`/`, `/assets/`).
    fn resolve(dir: &str, r: &str) -> String {
        let mut parts: Vec<&str> = if r.starts_with('/') {
            Vec::new()
        } else {
            dir.split('/').filter(|s| !s.is_empty()).collect()
        };
        for seg in r.split('/') {
            match seg {
                "" | "." => {}
                ".." => {
                    parts.pop();
                }
                s => parts.push(s),
            }
        }
        format!("/{}", parts.join("/"))
    }
}
