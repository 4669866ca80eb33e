//! DWG → DXF through the configured converter command (`DWG_CONVERTER=cmd` and
//! `DWG_TO_DXF_CMD`, with `{input}` and `{output}` placeholders), as the Python worker's
//! command mode does; anything else fails the job and says what to configure.

use super::settings::DwgConverter;

#[derive(Debug, thiserror::Error)]
pub enum DwgError {
    #[error("DWG conversion disabled by DWG_CONVERTER: set DWG_CONVERTER=cmd and DWG_TO_DXF_CMD (a command with {{input}} and {{output}}) to render DWG files")]
    Disabled,
    #[error("DWG_CONVERTER={0} is not available in this worker: use DWG_CONVERTER=cmd with DWG_TO_DXF_CMD")]
    Unavailable(String),
    #[error("DWG->DXF command template resolved to an empty command")]
    EmptyCommand,
    #[error("DWG->DXF conversion: {0}")]
    Io(#[from] std::io::Error),
    #[error("DWG->DXF command {program} failed ({status}): {stderr}")]
    Failed {
        program: String,
        status: String,
        stderr: String,
    },
    #[error("DWG->DXF command finished but output missing")]
    NoOutput,
}

/// The DXF bytes of a DWG drawing.
pub async fn to_dxf(converter: &DwgConverter, dwg: &[u8]) -> Result<Vec<u8>, DwgError> {
    let template = match converter {
        DwgConverter::Disabled => return Err(DwgError::Disabled),
        DwgConverter::Unavailable(mode) => return Err(DwgError::Unavailable(mode.clone())),
        DwgConverter::Command(t) => t,
    };
    let dir = tempfile::Builder::new()
        .prefix("dedup2d_render_")
        .tempdir()?;
    let (input, output) = (dir.path().join("input.dwg"), dir.path().join("input.dxf"));
    tokio::fs::write(&input, dwg).await?;
    let line = template
        .replace("{input}", &input.display().to_string())
        .replace("{output}", &output.display().to_string());
    let mut words = line.split_whitespace();
    let program = words.next().ok_or(DwgError::EmptyCommand)?.to_string();
    let out = tokio::process::Command::new(&program)
        .args(words)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(DwgError::Failed {
            program,
            status: out.status.to_string(),
            stderr: stderr.chars().take(300).collect(),
        });
    }
    match tokio::fs::read(&output).await {
        Ok(b) => Ok(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(DwgError::NoOutput),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn command_mode_and_refusals() {
        let cp = DwgConverter::Command("cp {input} {output}".into());
        assert_eq!(to_dxf(&cp, b"bytes").await.unwrap(), b"bytes");
        let err = to_dxf(&DwgConverter::Disabled, b"x").await.unwrap_err();
        assert!(err.to_string().contains("DWG_CONVERTER=cmd"), "{err}");
        let err = to_dxf(&DwgConverter::Command("false {input}".into()), b"x")
            .await
            .unwrap_err();
        assert!(err.to_string().contains("failed"), "{err}");
        let err = to_dxf(&DwgConverter::Command("true {input}".into()), b"x")
            .await
            .unwrap_err();
        assert!(matches!(err, DwgError::NoOutput), "{err}");
    }
}
