//! The pages a person sees when a sign-in does not end in the console: plain HTML in the
//! console's style, no script, every text escaped. They say what went wrong and how to go
//! on; they never hold a code, a token or a verifier.

use axum::http::header::{CONTENT_TYPE, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// No script at all; the console's stylesheet; never framed.
const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self' data:; \
                   form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// `text` with HTML's special characters escaped.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// A page: a title, what happened, and (when there is one) the detail that tells why.
pub fn page(status: StatusCode, title: &str, message: &str, detail: Option<&str>) -> Response {
    let detail = detail
        .map(|d| {
            format!(
                "\n  <p class=\"field-error\" id=\"sso-detail\">{}</p>",
                escape(d)
            )
        })
        .unwrap_or_default();
    let html = format!(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{title} - keygate</title>\n\
         <link rel=\"stylesheet\" href=\"/console/console.css\">\n</head>\n<body>\n\
         <section class=\"signin\" id=\"sso-error\">\n  <h1>{title}</h1>\n  \
         <p id=\"sso-message\">{message}</p>{detail}\n  \
         <p><a href=\"/auth/oidc/login\">Sign in again</a> · <a href=\"/\">Back to the console</a></p>\n\
         </section>\n</body>\n</html>\n",
        title = escape(title),
        message = escape(message),
    );
    let mut response = (status, html).into_response();
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(
        HeaderName::from_static("content-security-policy"),
        HeaderValue::from_static(CSP),
    );
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn what_the_provider_says_is_shown_as_text_never_as_markup() {
        let response = page(
            StatusCode::BAD_REQUEST,
            "Sign-in refused",
            "The provider said no.",
            Some("access_denied: <script>alert('x')</script> & \"more\""),
        );
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert_eq!(response.headers()[CONTENT_TYPE], "text/html; charset=utf-8");
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let body = String::from_utf8(body.to_vec()).unwrap();
        assert!(!body.contains("<script>"), "{body}");
        assert!(body.contains(
            "access_denied: &lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;more&quot;"
        ));
    }
}
