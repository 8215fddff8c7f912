//! `/runners/{id}/files`: list, update (delete then copy), download.

use std::sync::Arc;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde::Serialize;
use tokio_util::io::ReaderStream;
use trident_backends::{Executor, FileHeader};

use super::bodies::UpdateBody;
use crate::monitoring::DownloadMeter;

use super::{ApiError, AppState, Query, claimed_runner, decode, flag, touch};

#[derive(Serialize)]
pub(super) struct Listing {
    files: Vec<FileHeader>,
}

/// Lists files: `path` defaults to the workspace (`./`), `recursive` to true (also when it does
/// not parse), `privilegedExecution` to false.
pub(super) async fn list<E: Executor>(
    State(state): State<Arc<AppState<E>>>,
    Path(runner): Path<String>,
    query: Query,
) -> Result<Json<Listing>, ApiError> {
    let runner = claimed_runner(&state, &runner).await?;
    let path = query.get("path").cloned().unwrap_or_else(|| "./".into());
    let recursive = flag(query.get("recursive"), true);
    let privileged = flag(query.get("privilegedExecution"), false);
    touch(&state, runner).await?;
    let files = state
        .executor
        .list_files(runner, path, recursive, privileged)
        .await?;
    Ok(Json(Listing { files }))
}

/// Deletes, then copies. Contents are base64 (a bad encoding is a 400 and nothing is changed).
pub(super) async fn update<E: Executor>(
    State(state): State<Arc<AppState<E>>>,
    Path(runner): Path<String>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    // The runner is looked up after the body was read (Poseidon's issue #54).
    let runner = claimed_runner(&state, &runner).await?;
    let body = decode::<UpdateBody>(&body)?;
    let files = body.delete.len() + body.copy.len();
    let files_max = state.limits.files_per_update_max;
    if files > files_max {
        return Err(ApiError::BadRequest(format!(
            "the update names {files} files; at most {files_max} are allowed in one request"
        )));
    }
    let update = body.into_update()?;
    touch(&state, runner).await?;

    state.executor.update_files(runner, update).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Streams one file with `Content-Length` and `Content-Disposition: attachment`.
pub(super) async fn download<E: Executor>(
    State(state): State<Arc<AppState<E>>>,
    Path(runner): Path<String>,
    query: Query,
) -> Result<Response, ApiError> {
    let runner = claimed_runner(&state, &runner).await?;
    let path = query
        .get("path")
        .cloned()
        .ok_or_else(|| ApiError::BadRequest("the path parameter is missing".into()))?;
    let privileged = flag(query.get("privilegedExecution"), false);
    touch(&state, runner).await?;
    let download = state
        .executor
        .download_file(runner, path.clone(), privileged)
        .await?;
    let disposition = format!(
        "attachment; filename=\"{}\"",
        path.replace(['"', '\\', '\r', '\n'], "_")
    );
    // Measured when the body is dropped: after its last byte, or when the client went away.
    let mut meter = DownloadMeter::new(Arc::clone(&state.monitor), runner, download.size);
    let stream = ReaderStream::new(download.reader).map(move |chunk| {
        if let Ok(bytes) = &chunk {
            meter.sent(bytes.len());
        }
        chunk
    });
    let mut response = Body::from_stream(stream).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(download.size));
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Ok(value) = HeaderValue::from_str(&disposition) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    Ok(response)
}
