//! The console's files: served without a token, locked down by their headers, and
//! self-contained (no CDN, nothing fetched from elsewhere).

use reqwest::Method;

use crate::Service;

#[tokio::test]
async fn the_console_is_served_whole_from_this_origin() {
    let service = Service::start().await;
    let page = service.send(service.request(Method::GET, "/", None)).await;
    assert_eq!(page.status, 200);
    assert_eq!(page.headers["content-type"], "text/html; charset=utf-8");
    let csp = page.headers["content-security-policy"].to_str().unwrap();
    for rule in [
        "default-src 'none'",
        "script-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(rule), "{rule} missing from {csp}");
    }
    assert!(page
        .text
        .contains(r#"<script type="module" src="/console/console.js">"#));

    for (path, content_type) in [
        ("/console/console.js", "text/javascript; charset=utf-8"),
        ("/console/console.css", "text/css; charset=utf-8"),
    ] {
        let asset = service.send(service.request(Method::GET, path, None)).await;
        assert_eq!(asset.status, 200, "{path}");
        assert_eq!(asset.headers["content-type"], content_type, "{path}");
        assert_eq!(asset.headers["x-content-type-options"], "nosniff");
        // The one absolute URL allowed is the SVG namespace, which is a name, not a fetch.
        let text = asset.text.replace("http://www.w3.org/2000/svg", "");
        assert!(
            !text.contains("http://") && !text.contains("https://") && !text.contains("//cdn"),
            "{path} refers to another origin"
        );
    }

    let settings = service
        .send(service.request(Method::GET, "/console/settings.json", None))
        .await;
    assert_eq!(settings.status, 200);
    assert_eq!(settings.body["base_url"], "http://localhost:10000/v1");
}
