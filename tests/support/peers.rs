//! The Python peers (`tests/peers/`): the interpreter that has the pinned packages, and the path of
//! a peer script. A missing interpreter is a test failure with a hint, never a skip.

use std::path::PathBuf;

/// The Python interpreter with the pinned peer packages (`tests/peers/requirements.txt`):
/// `DEDUP2D_PYTHON`, else the virtualenv `hack/lib/peers.sh` makes for the current requirements
/// (`$DEDUP2D_CACHE/venv-<first 12 hex of their sha256>`), else `$DEDUP2D_CACHE/venv`.
pub fn python() -> PathBuf {
    let candidates = [
        std::env::var_os("DEDUP2D_PYTHON").map(PathBuf::from),
        dirs_cache().map(|c| c.join(format!("venv-{}/bin/python", requirements_hash()))),
        dirs_cache().map(|c| c.join("venv/bin/python")),
    ];
    for c in candidates.into_iter().flatten() {
        if c.is_file() {
            return c;
        }
    }
    panic!(
        "no Python with the peer packages found. Create it with `hack/test.sh` or `hack/demo.sh` \
         (they make $DEDUP2D_CACHE/venv-<hash> from tests/peers/requirements.txt), or set DEDUP2D_PYTHON."
    )
}

/// `sha256sum tests/peers/requirements.txt | cut -c1-12`, as `hack/lib/peers.sh` computes it.
fn requirements_hash() -> String {
    use sha2::Digest as _;
    let req = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/peers/requirements.txt");
    let bytes = std::fs::read(&req).unwrap_or_else(|e| panic!("read {}: {e}", req.display()));
    hex::encode(sha2::Sha256::digest(bytes))[..12].to_string()
}

fn dirs_cache() -> Option<PathBuf> {
    std::env::var_os("DEDUP2D_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/dedup2d")))
}

/// Path of a peer script under `tests/peers/`.
pub fn peer(script: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/peers")
        .join(script)
}
