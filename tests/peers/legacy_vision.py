"""The pre-upgrade Python worker's dedupcad-vision pipeline, for legacy_worker.py --vision-url:
our own re-implementation of what it does with a job (render CAD files to PNG, call
`POST {url}/api/v2/search` with the same form fields and retry rules, add the label fields to
every match, run the precision pass for a query with geometry when no candidate geometry is
stored), so a test can compare its result documents with the Rust worker's.

The render is a white canvas of the configured size (DEDUPCAD2_RENDER_SIZE_PX): the test's vision
stand-in answers by file name, not by pixels.
"""
import json
import os
import random
import struct
import time
import urllib.error
import urllib.request
import uuid
import zlib
from pathlib import PurePosixPath

CAD_MIME = {"application/dxf", "application/x-dxf", "image/vnd.dwg", "application/acad"}
GATES = {"off", "auto", "file_name", "meta"}


def is_cad(name, content_type):
    ct = (content_type or "").lower()
    return PurePosixPath(name or "").suffix.lower() in {".dxf", ".dwg"} or ct in CAD_MIME or "dxf" in ct or "dwg" in ct


def blank_png(size):
    raw = b"".join(b"\x00" + b"\xff" * size for _ in range(size))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", size, size, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def render(name, content_type):
    suffix = PurePosixPath(name or "").suffix.lower()
    if suffix not in {".dxf", ".dwg"}:
        ct = (content_type or "").lower()
        suffix = ".dwg" if "dwg" in ct else ".dxf" if "dxf" in ct else suffix
    if suffix not in {".dxf", ".dwg"}:
        raise RuntimeError(f"Unsupported CAD format for rendering: {suffix or 'unknown'}")
    if suffix == ".dwg":
        raise RuntimeError("DWG conversion disabled by DWG_CONVERTER")
    size = int(os.getenv("DEDUPCAD2_RENDER_SIZE_PX", "1024") or "1024")
    if size <= 0:
        size = int(os.getenv("DEDUPCAD2_RENDER_FALLBACK_SIZE_PX", "512") or "512")
    stem = PurePosixPath(name or "drawing").stem or "drawing"
    return f"{stem}.png", blank_png(size), "image/png"


def post_search(url, name, data, content_type, fields):
    boundary = uuid.uuid4().hex
    parts = []
    for k, v in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode())
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
                 f"Content-Type: {content_type}\r\n\r\n".encode() + data + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    attempts = max(1, int(os.getenv("DEDUPCAD_VISION_RETRY_MAX_ATTEMPTS", "2")))
    base = float(os.getenv("DEDUPCAD_VISION_RETRY_BASE_DELAY_SECONDS", "0.5"))
    cap = float(os.getenv("DEDUPCAD_VISION_RETRY_MAX_DELAY_SECONDS", "5.0"))
    timeout = float(os.getenv("DEDUPCAD_VISION_TIMEOUT_SECONDS", "60"))
    for attempt in range(1, attempts + 1):
        req = urllib.request.Request(url.rstrip("/") + "/api/v2/search", data=body, method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        retry_after = None
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as e:
            retryable = e.code >= 500 or e.code in (408, 429)
            if e.code == 429 and e.headers.get("Retry-After"):
                retry_after = float(e.headers["Retry-After"])
            if not retryable or attempt == attempts:
                raise RuntimeError(f"dedupcad-vision HTTP {e.code}") from e
        except (ValueError, OSError):
            if attempt == attempts:
                raise
        delay = min(cap, base * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
        time.sleep(max(delay, retry_after or 0.0))


LABELS = ("fine_part_type", "coarse_part_type", "decision_source", "is_coarse_label")


def add_labels(resp):
    for key in ("duplicates", "similar"):
        for m in resp.get(key) or []:
            m.update({k: None for k in LABELS})


def version_key(file_name):
    stem = PurePosixPath(str(file_name or "")).stem.strip()
    i = len(stem)
    while i > 0 and stem[i - 1].isdigit():
        i -= 1
    if i == len(stem) or i == 0 or stem[i - 1] not in "vV":
        return None
    head = stem[: i - 1]
    if head and head[-1] in "_- \t":
        head = head[:-1]
    base = head.rstrip(" _-").strip()
    return base or None


def meta_key(geom):
    meta = geom.get("meta") if isinstance(geom, dict) else None
    if not isinstance(meta, dict):
        return None
    for k in ("drawing_number", "drawing_no", "drawingNo", "drawingNumber", "drawing_id", "drawingId", "number"):
        v = meta.get(k)
        if isinstance(v, str) and v.strip():
            return v.strip()
    return None


def precision_without_store(resp, geom, query_file, p):
    vw, gw = float(p["precision_visual_weight"]), float(p["precision_geom_weight"])
    if vw < 0 or gw < 0 or vw + gw <= 0:
        raise ValueError("invalid weights")
    vw = vw / (vw + gw)
    matches = list(resp.get("duplicates") or []) + list(resp.get("similar") or [])
    if not matches:
        return
    profile = str(p["precision_profile"] or "strict").strip().lower() or "strict"
    mode = str(p["version_gate"] or "off").strip().lower() or "off"
    if mode not in GATES:
        raise ValueError(f"Invalid version_gate: {p['version_gate']}")
    gate, qkey = "off", None
    if profile == "version" and mode != "off":
        mk, fk = meta_key(geom), version_key(query_file)
        if mode == "meta" or (mode == "auto" and mk):
            gate, qkey = ("meta" if mk else "off"), mk
        elif fk:
            gate, qkey = "file_name", fk
    dup, sim = float(p["duplicate_threshold"]), float(p["similar_threshold"])
    missing = gated = 0
    ranked = sorted(matches, key=lambda m: float(m.get("similarity") or 0.0), reverse=True)
    for m in ranked[: max(1, int(p["precision_top_n"]))]:
        if not m.get("file_hash"):
            continue
        ckey = version_key(m.get("file_name")) if gate == "file_name" else None
        if ckey and ckey != qkey:
            m["similarity"], m["verdict"] = 0.0, "different"
            m.setdefault("levels", {}).setdefault("l4", {})["version_gate"] = {
                "mode": gate, "query_key": qkey, "candidate_key": ckey, "match": False}
            gated += 1
            continue
        missing += 1
    for m in matches:
        visual = float(m.get("similarity") or 0.0)
        m["visual_similarity"] = m.get("visual_similarity") or visual
        m["similarity"] = vw * visual
    dups = [m for m in matches if m["similarity"] >= dup]
    sims = [m for m in matches if sim <= m["similarity"] < dup]
    for m in matches:
        m["verdict"] = "duplicate" if m in dups else "similar" if m in sims else "different"
    n = int(p["max_results"])
    resp["duplicates"] = sorted(dups, key=lambda m: m["similarity"], reverse=True)[:n]
    resp["similar"] = sorted(sims, key=lambda m: m["similarity"], reverse=True)[:n]
    resp["total_matches"] = len(resp["duplicates"]) + len(resp["similar"])
    warnings = resp.setdefault("warnings", [])
    if missing:
        warnings.append(f"precision_missing_geom_json:{missing}")
    if gated:
        warnings.append(f"precision_version_gate_filtered:{gated}")


def run(url, payload, data):
    name = str(payload.get("file_name") or "unknown")
    ct = str(payload.get("content_type") or "application/octet-stream")
    if payload.get("render_required") or is_cad(name, ct):
        name, data, ct = render(name, ct)
    rp = payload.get("request_params") or {}
    p = {
        "mode": str(rp.get("mode") or "balanced"), "max_results": int(rp.get("max_results") or 50),
        "precision_profile": rp.get("precision_profile"), "version_gate": rp.get("version_gate"),
        "precision_top_n": int(rp.get("precision_top_n") or 20),
        "precision_visual_weight": float(rp.get("precision_visual_weight") or 0.3),
        "precision_geom_weight": float(rp.get("precision_geom_weight") or 0.7),
        "duplicate_threshold": float(rp.get("duplicate_threshold") or 0.95),
        "similar_threshold": float(rp.get("similar_threshold") or 0.8),
    }
    flags = {k: bool(rp.get(k, d)) for k, d in
             (("compute_diff", True), ("enable_ml", False), ("enable_geometric", False), ("enable_precision", True))}
    fields = {"mode": p["mode"], "max_results": str(p["max_results"])}
    fields.update({k: "true" if flags[k] else "false" for k in ("compute_diff", "enable_ml", "enable_geometric")})
    resp = post_search(url, name, data, ct, fields)
    add_labels(resp)
    geom = payload.get("query_geom")
    if geom is not None and (flags["enable_precision"] or flags["enable_geometric"] or p["mode"] == "precise"):
        started = time.perf_counter()
        precision_without_store(resp, geom, name, p)
        ms = (time.perf_counter() - started) * 1000
        timing = resp.setdefault("timing", {})
        timing["precision_ms"] = ms
        timing["l4_ms"] = float(timing.get("l4_ms") or 0.0) + ms
        timing["total_ms"] = float(timing.get("total_ms") or 0.0) + ms
    return resp
