//! The HTTP answers: JSON bodies, and `{"Err":…}` for a failure.

use std::io;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::StatusCode;
use hyper::header::{CONTENT_TYPE, HeaderValue};

use crate::error::{Error, Result};
use crate::protocol::{self, Response};

/// A response body: JSON in memory or a layer tar streamed.
pub(crate) type Body = BoxBody<Bytes, io::Error>;
/// The server's answer to one request.
pub(crate) type HttpResponse = hyper::Response<Body>;

/// The response as JSON, or the error as `{"Err":…}`.
pub(crate) fn answer(result: Result<Response>) -> HttpResponse {
    match result {
        Ok(r) => json(StatusCode::OK, &r),
        Err(e) => failure(&e),
    }
}

/// `{"Err":…}` with the error and its causes, logged too.
pub(crate) fn failure(e: &Error) -> HttpResponse {
    tracing::warn!(error = %message(e), "request failed");
    json(
        StatusCode::INTERNAL_SERVER_ERROR,
        &error_response(&message(e)),
    )
}

/// A response that carries only `message` as its `Err`.
pub(crate) fn error_response(message: &str) -> Response {
    Response {
        err: message.to_owned(),
        ..Response::default()
    }
}

/// The error and its causes, as one line.
fn message(e: &Error) -> String {
    let mut out = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

/// `value` as a JSON body with `status`.
pub(crate) fn json<T: serde::Serialize>(status: StatusCode, value: &T) -> HttpResponse {
    let bytes = serde_json::to_vec(value).unwrap_or_else(|e| {
        format!("{{\"Err\":\"cannot encode the response: {e}\"}}").into_bytes()
    });
    let mut response = hyper::Response::new(
        Full::new(Bytes::from(bytes))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(protocol::CONTENT_TYPE),
    );
    response
}
