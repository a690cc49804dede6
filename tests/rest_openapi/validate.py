#!/usr/bin/env python3
"""Validates Hearth's REST API document with an independent validator.

Starts the real server binary on a free loopback port (its own API key, data dir, no
TURN), waits for GET /readyz, fetches GET /v1/openapi.json and checks it with
`openapi-spec-validator` (pinned in requirements.txt next to this file) as an OpenAPI 3.1
document; then checks a few things the document must say about this API (the paths and
their methods, the bearer security scheme, problem+json error bodies, camelCase fields).

    target/rest-openapi-venv/bin/python tests/rest_openapi/validate.py target/debug/hearth
    target/rest-openapi-venv/bin/python tests/rest_openapi/validate.py --file openapi.json

Exits 0 if the document is valid, 1 otherwise (with the validator's errors). The server is
always killed at the end; its log is printed when something failed.
"""

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from openapi_spec_validator import OpenAPIV31SpecValidator

REPO = Path(__file__).resolve().parents[2]
READY_DEADLINE_S = 30

EXPECTED = {
    "/v1/meetings": {"get", "post"},
    "/v1/meetings/{id}": {"get", "patch", "delete"},
    "/v1/meetings/{id}/participants": {"get"},
    "/v1/meetings/{id}/participants/{pid}": {"get", "delete"},
    "/v1/meetings/{id}/participants/{pid}/tracks/{tid}": {"patch"},
    "/v1/meetings/{id}/participants/{pid}/permissions": {"put"},
    "/v1/tokens": {"post"},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fetch_from_server(binary: Path) -> tuple[dict, str]:
    port = free_port()
    with tempfile.TemporaryDirectory() as data:
        log = tempfile.TemporaryFile(mode="w+")
        proc = subprocess.Popen(
            [
                str(binary),
                "--http", f"127.0.0.1:{port}",
                "--media-port", "0",
                "--turn-port", "0",
                "--data-dir", data,
                "--api-key", "APIopenapi",
                "--api-secret", "openapi-validate-secret-0123456789",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + READY_DEADLINE_S
            base = f"http://127.0.0.1:{port}"
            while True:
                try:
                    with urllib.request.urlopen(f"{base}/readyz", timeout=2) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise SystemExit(f"the server did not become ready:\n{log.read()}")
                time.sleep(0.1)
            with urllib.request.urlopen(f"{base}/v1/openapi.json", timeout=10) as r:
                content_type = r.headers.get("content-type", "")
                document = json.load(r)
            return document, content_type
        finally:
            proc.kill()
            proc.wait()
            log.close()


def check(document: dict) -> list[str]:
    try:
        errors = [
            f"{'/'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}"
            for e in OpenAPIV31SpecValidator(document).iter_errors()
        ]
    except Exception as e:  # e.g. a $ref to nowhere stops the validator itself
        return [f"{type(e).__name__}: {str(e)[:300]}"]
    if errors:
        return errors
    if not str(document.get("openapi", "")).startswith("3.1"):
        errors.append(f"openapi is {document.get('openapi')!r}, not 3.1.x")
    paths = document.get("paths", {})
    for path, methods in EXPECTED.items():
        have = set(paths.get(path, {})) & {"get", "post", "put", "patch", "delete"}
        if have != methods:
            errors.append(f"{path}: methods {sorted(have)}, expected {sorted(methods)}")
    schemes = document.get("components", {}).get("securitySchemes", {})
    if schemes.get("bearer", {}).get("scheme") != "bearer":
        errors.append("no http bearer security scheme named `bearer`")
    if document.get("security") != [{"bearer": []}]:
        errors.append("the document does not require the bearer scheme globally")
    for path, item in paths.items():
        for method, op in item.items():
            for status, response in op.get("responses", {}).items():
                if status.startswith(("4", "5")) and "application/problem+json" not in response.get("content", {}):
                    errors.append(f"{method.upper()} {path} {status}: not application/problem+json")
    for name, schema in document.get("components", {}).get("schemas", {}).items():
        for field in schema.get("properties", {}):
            if "_" in field:
                errors.append(f"schema {name}: field {field} is not camelCase")
    return errors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("binary", nargs="?", default=str(REPO / "target/debug/hearth"))
    parser.add_argument("--file", help="validate this document instead of a server's")
    args = parser.parse_args()
    if args.file:
        document = json.loads(Path(args.file).read_text())
        source = args.file
    else:
        document, content_type = fetch_from_server(Path(args.binary))
        source = "GET /v1/openapi.json"
        if not content_type.startswith("application/json"):
            print(f"rest-openapi: {source} has content-type {content_type!r}")
            return 1
    errors = check(document)
    for e in errors:
        print(f"  {e}")
    ops = sum(len(item) for item in document.get("paths", {}).values())
    schemas = len(document.get("components", {}).get("schemas", {}))
    if errors:
        print(f"rest-openapi: {source} is NOT a valid OpenAPI 3.1 document ({len(errors)} errors)")
        return 1
    print(
        f"rest-openapi: {source} is valid OpenAPI {document['openapi']} "
        f"({len(document['paths'])} paths, {ops} operations, {schemas} schemas)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
