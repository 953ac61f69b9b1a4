//! Reading an HTTP response body no larger than a limit: a model's answer, a fetched input.

/// The response body, or `None` once it exceeds `limit` bytes (read no further: the task fails
/// for its answer or input, whatever the rest of it holds).
pub async fn read_bounded(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Option<Vec<u8>>, reqwest::Error> {
    let announced = response.content_length().unwrap_or_default();
    if announced > limit as u64 {
        return Ok(None);
    }
    let mut body = Vec::with_capacity(announced as usize);
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > limit {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}
