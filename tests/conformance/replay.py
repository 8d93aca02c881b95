#!/usr/bin/env python3
"""The OCI distribution-spec v1.1 conformance suite's checks, in Python (standard library only).

The suite itself is Go (ginkgo) code: it runs against berth as against any registry,
with OCI_NAMESPACE and OCI_CROSSMOUNT_NAMESPACE set to `<project>/<name>` repositories,
since berth's repositories always live in a project. This script makes the same
requests and checks the same statuses, headers and bodies, in the same order, so the
suite's verdict can be had where Go modules cannot be fetched. `tests/it/conformance.rs`
runs it against a fresh daemon in the integration suite.

Command line (the environment variables are the suite's own):

    OCI_ROOT_URL=http://127.0.0.1:7420 OCI_NAMESPACE=conf/repo \
    OCI_CROSSMOUNT_NAMESPACE=conf/other OCI_AUTOMATIC_CROSSMOUNT=1 \
    OCI_USERNAME=admin OCI_PASSWORD=<an API token> \
    OCI_TEST_PULL=1 OCI_TEST_PUSH=1 OCI_TEST_CONTENT_DISCOVERY=1 \
    OCI_TEST_CONTENT_MANAGEMENT=1 \
    python3 tests/conformance/replay.py [--suite latest|v1.1.0] [--auth reggie|basic] [-v]

  --suite latest  (default) the suite's current form: setup helpers (pushBlob,
                  pushManifest, deleteManifests, deleteBlobs) in setup.go, the pull,
                  push, content discovery and content management workflows.
  --suite v1.1.0  the v1.1.0 release's pull and discovery checks (requests inline, a
                  strict OCI-Subject check on manifests with a subject).
  --auth reggie   (default) what the suite's HTTP client does: every request goes out
                  without credentials; on 401 it reads WWW-Authenticate, fetches a bearer
                  token from the realm with Basic OCI_USERNAME:OCI_PASSWORD (scope from
                  OCI_AUTH_SCOPE or the challenge) and sends the request again with it.
  --auth basic    Basic OCI_USERNAME:OCI_PASSWORD on every request.
  -v              print every request and response (like OCI_DEBUG=1).

Other switches as in the suite: OCI_DELETE_MANIFEST_BEFORE_BLOBS (default 1),
OCI_AUTOMATIC_CROSSMOUNT (unset: those two checks are skipped), OCI_HIDE_SKIPPED_WORKFLOWS,
OCI_TAG_NAME + OCI_MANIFEST_DIGEST + OCI_BLOB_DIGEST (no pull setup), OCI_TAG_LIST (no
discovery setup), OCI_AUTH_SCOPE, OCI_DEBUG.

Output: one line per check, PASS / FAIL / SKIP, with the suite's context path and its
It() text; a FAIL adds the request, status, relevant headers, body and the expectation.
The exit status is 1 when any check failed.

Differences that cannot matter to a registry: random blobs come from Python's RNG
instead of Go's seeded math/rand; JSON documents have the suite's fields, order and
tab indentation.
"""

import argparse
import base64
import hashlib
import http.client
import json
import os
import random
import re
import string
import sys
import urllib.parse

# --------------------------------------------------------------------------------------------
# HTTP client emulating reggie on top of resty v2 / Go net/http
# --------------------------------------------------------------------------------------------

USER_AGENT = "distribution-spec-conformance-tests"
PATH_SAFE = "/:@!$&'()*+,;=-._~"  # what Go's URL.EscapedPath leaves alone in a path
SHOW_HEADERS = ("location", "range", "content-range", "content-length", "content-type",
                "docker-content-digest", "oci-subject", "oci-filters-applied", "link",
                "www-authenticate", "docker-upload-uuid", "oci-chunk-min-length")


class ClientError(Exception):
    """A Go-side error (err != nil): invalid request, transport failure, bad token JSON."""


class Response:
    def __init__(self, method, url, req_headers, req_body, status, headers, body):
        self.method, self.url, self.req_headers, self.req_body = method, url, req_headers, req_body
        self.status, self.headers, self.body = status, headers, body

    def header(self, name):
        # Go's Header.Get: first value, "" when absent
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return ""

    def relative_location(self):
        loc = self.header("Location")
        u = urllib.parse.urlsplit(loc)
        path = urllib.parse.unquote(u.path)
        return path + ("?" + u.query if u.query else "")

    def absolute_location(self):
        return self.header("Location")

    def text(self):
        return self.body.decode("utf-8", "replace")

    def describe(self, limit=600):
        lines = ["    request:  %s %s" % (self.method, self.url)]
        rh = {k: v for k, v in self.req_headers.items() if k.lower() != "authorization"}
        if rh:
            lines.append("    req hdrs: %s" % rh)
        if self.req_body:
            lines.append("    req body: %d bytes" % len(self.req_body))
        lines.append("    status:   %d" % self.status)
        shown = [(k, v) for k, v in self.headers if k.lower() in SHOW_HEADERS]
        if shown:
            lines.append("    headers:  " + "; ".join("%s: %s" % kv for kv in shown))
        if self.body:
            b = self.text()
            lines.append("    body:     " + (b if len(b) <= limit else b[:limit] + "..."))
        return "\n".join(lines)


class Client:
    def __init__(self, root, namespace, username, password, auth_scope="", auth_mode="reggie",
                 debug=False):
        self.root = root.rstrip("/")
        self.namespace = namespace
        self.username, self.password = username, password
        self.auth_scope = auth_scope
        self.auth_mode = auth_mode
        self.debug = debug
        self.sent = 0

    # reggie NewRequest: placeholder substitution, then "<address>/<path without leading />"
    def build(self, path, name=None, reference=None, digest=None):
        subst = {"<name>": name or self.namespace, "<reference>": reference or "",
                 "<digest>": digest or ""}
        for k, v in subst.items():
            if v:
                path = path.replace(k, v)
        return self.root + "/" + path.lstrip("/")

    def do(self, method, path, name=None, reference=None, digest=None, query=None, headers=None,
           body=None):
        url = self.build(path, name, reference, digest)
        # reggie validateRequest
        if re.search(r"<name>|<reference>|<digest>|<session_id>|//{2,}", url):
            raise ClientError("request is invalid: %s" % url)
        if query:
            sep = "&" if urllib.parse.urlsplit(url).query else "?"
            url = url + sep + urllib.parse.urlencode(query)
        headers = dict(headers or {})
        headers["User-Agent"] = USER_AGENT
        # resty v2 copies a JSON-ish Content-Type into Accept when no Accept is set
        ct = headers.get("Content-Type", "")
        if "Accept" not in headers and re.search(r"(?i:(application|text)/(.*json.*)(;|$))", ct):
            headers["Accept"] = ct
        # resty v2 does not send a payload on GET/HEAD; Go computes Content-Length from the body
        # (a Content-Length set as a header is ignored) and sends "0" for POST/PUT/PATCH.
        headers.pop("Content-Length", None)
        if method in ("GET", "HEAD"):
            body = None
        if self.auth_mode == "basic":
            headers["Authorization"] = self._basic()
        resp = self._send(method, url, headers, body)
        if resp.status == 401 and self.auth_mode == "reggie":
            resp = self._retry_with_auth(method, url, headers, body, resp)
        return resp

    def _basic(self):
        raw = ("%s:%s" % (self.username, self.password)).encode()
        return "Basic " + base64.b64encode(raw).decode()

    def _retry_with_auth(self, method, url, headers, body, resp):
        raw = resp.header("Www-Authenticate")
        if not raw:
            return resp
        m = re.match(r"(?i).*(bearer|basic).*", raw)
        kind = m.group(1).lower() if m else ""
        if kind == "bearer":
            params = dict(re.findall(r'([a-zA-z]+)="(.+?)"', raw))
            q = {"service": params.get("service", "")}
            scope = self.auth_scope or params.get("scope", "")
            if scope:
                q["scope"] = scope
            realm = params.get("realm", "")
            turl = realm + ("&" if "?" in realm else "?") + urllib.parse.urlencode(q)
            tresp = self._send("GET", turl, {"Accept": "application/json", "User-Agent": USER_AGENT,
                                             "Authorization": self._basic()}, None)
            try:
                info = json.loads(tresp.body or b"null")
                token = info.get("token") or info.get("access_token") or ""
            except Exception as e:  # json.Unmarshal error -> err != nil in the suite
                raise ClientError("token endpoint %s answered %d %r: %s" %
                                  (turl, tresp.status, tresp.body[:200], e))
            headers = dict(headers, Authorization="Bearer " + token)
        elif kind == "basic":
            headers = dict(headers, Authorization=self._basic())
        else:
            raise ClientError("something went wrong with authorization")
        return self._send(method, url, headers, body)

    def _send(self, method, url, headers, body, redirects=0):
        u = urllib.parse.urlsplit(url)
        path = urllib.parse.quote(urllib.parse.unquote(u.path), safe=PATH_SAFE) or "/"
        target = path + ("?" + u.query if u.query else "")
        conn_cls = http.client.HTTPSConnection if u.scheme == "https" else http.client.HTTPConnection
        conn = conn_cls(u.hostname, u.port, timeout=60)
        hdrs = dict(headers)
        if body is not None or method in ("POST", "PUT", "PATCH"):
            hdrs["Content-Length"] = str(len(body or b""))
        try:
            conn.request(method, target, body=body, headers=hdrs)
            r = conn.getresponse()
            data = r.read()
            resp = Response(method, url, hdrs, body, r.status, r.getheaders(), data)
        except (OSError, http.client.HTTPException) as e:
            raise ClientError("%s %s: %s" % (method, url, e))
        finally:
            conn.close()
        self.sent += 1
        if self.debug:
            print("  >>> %s %s %s" % (method, target, {k: v for k, v in hdrs.items()
                                                     if k != "Authorization"}))
            shown = "<token response, redacted>" if '"token"' in resp.text() else resp.text()[:300]
            print("  <<< %d %s %s" % (resp.status, dict(resp.headers), shown))
        # Go's http.Client follows up to 10 redirects
        if resp.status in (301, 302, 303, 307, 308) and resp.header("Location") and redirects < 10:
            nxt = urllib.parse.urljoin(url, resp.header("Location"))
            if resp.status in (301, 302, 303) and method != "HEAD":
                method, body = "GET", None
            if urllib.parse.urlsplit(nxt).netloc != u.netloc:
                headers = {k: v for k, v in headers.items() if k != "Authorization"}
            return self._send(method, nxt, headers, body, redirects + 1)
        return resp


# --------------------------------------------------------------------------------------------
# Spec runner (ginkgo semantics: a failed Expect ends the spec, later specs still run)
# --------------------------------------------------------------------------------------------

class Fail(Exception):
    def __init__(self, expected, resp=None):
        super().__init__(expected)
        self.expected, self.resp = expected, resp


class Skip(Exception):
    pass


def expect(cond, expected, resp=None):
    if not cond:
        raise Fail(expected, resp)


def expect_status(resp, allowed, what=""):
    allowed = list(allowed) if isinstance(allowed, (list, tuple, set, range)) else [allowed]
    if resp.status not in allowed:
        if isinstance(allowed, range) or len(allowed) > 6:
            exp = "status in [%d, %d)" % (allowed[0], allowed[-1] + 1)
        else:
            exp = "status %s" % " or ".join(str(a) for a in allowed)
        raise Fail((what + ": " if what else "") + exp, resp)


TWO_XX = range(200, 300)


def run_only_if(v):
    if not v:
        raise Skip("you have skipped this test.")


def run_only_if_not(v):
    if v:
        raise Skip("you have skipped this test.")


class Runner:
    def __init__(self, enabled, hide_skipped):
        self.enabled = enabled
        self.hide_skipped = hide_skipped
        self.counts = {"PASS": 0, "FAIL": 0, "SKIP": 0}
        self.failures = []
        self.warnings = []

    def spec(self, workflow, context, text, src, fn):
        full = "%s / %s / %s" % (workflow, context, text)
        if workflow not in self.enabled:
            self.counts["SKIP"] += 1
            if not self.hide_skipped:
                print("SKIP %s  (workflow disabled)" % full)
            return
        try:
            fn()
        except Skip as s:
            self.counts["SKIP"] += 1
            print("SKIP %s  (%s)" % (full, s))
            return
        except Fail as f:
            self.counts["FAIL"] += 1
            self.failures.append(full)
            print("FAIL %s  [%s]" % (full, src))
            print("    expected: %s" % f.expected)
            if f.resp is not None:
                print(f.resp.describe())
            return
        except ClientError as e:
            self.counts["FAIL"] += 1
            self.failures.append(full)
            print("FAIL %s  [%s]" % (full, src))
            print("    expected: err == nil (client error: %s)" % e)
            return
        except Exception as e:  # a Go panic inside the spec (e.g. nil lastResponse) fails it
            self.counts["FAIL"] += 1
            self.failures.append(full)
            print("FAIL %s  [%s]" % (full, src))
            print("    panic: %s: %s" % (type(e).__name__, e))
            return
        self.counts["PASS"] += 1
        print("PASS %s" % full)

    def warn(self, msg):
        self.warnings.append(msg)
        print("    WARNING: %s" % msg)


# --------------------------------------------------------------------------------------------
# Test data (setup.go init())
# --------------------------------------------------------------------------------------------

LAYER_B64 = ("H4sIAAAAAAAAA+3OQQrCMBCF4a49xXgBSUnaHMCTRBptQRNpp6i3t0UEV7oqIv7fYgbmzeJpHHSjVy0"
             "WZCa1c/MufWVe94N3RWlrZ72x3k/30nhbFWKWLPU0Dhp6keJ8im//PuU/6pZH2WVtYx8b0Sz7LjWSR5VLG6YRBumSzOlGtjkd+qD"
             "jMWiX07Befbs7AAAAAAAAAAAAAAAAAPyzO34MnqoAKAAA")
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_EMPTY = "application/vnd.oci.empty.v1+json"
MT_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
NUM_WORKFLOWS = 16  # 1 << 4 in the suite's iota block, so 16 configs and manifests

ERROR_CODES = ["BLOB_UNKNOWN", "BLOB_UPLOAD_INVALID", "BLOB_UPLOAD_UNKNOWN", "DIGEST_INVALID",
               "MANIFEST_BLOB_UNKNOWN", "MANIFEST_INVALID", "MANIFEST_UNKNOWN",
               "MANIFEST_UNVERIFIED", "NAME_INVALID", "NAME_UNKNOWN", "SIZE_INVALID",
               "TAG_INVALID", "UNAUTHORIZED", "DENIED", "UNSUPPORTED"]


def sha(b):
    return "sha256:" + hashlib.sha256(b).hexdigest()


def go_json(obj):
    # json.MarshalIndent(v, "", "\t"); Go escapes <, >, & (none occur here)
    return json.dumps(obj, indent="\t", ensure_ascii=False).encode()


def descriptor(media_type, dgst, size, annotations=None, data=None, artifact_type=None,
               new_field=None):
    d = {"mediaType": media_type, "digest": dgst, "size": size}
    if annotations:
        d["annotations"] = annotations
    if data:
        d["data"] = base64.b64encode(data).decode()
    if artifact_type:
        d["artifactType"] = artifact_type
    # not omitempty: a nil []byte marshals as null
    d["newUnspecifiedField"] = base64.b64encode(new_field).decode() if new_field else None
    return d


def manifest_doc(config, layers, media_type=None, artifact_type=None, subject=None,
                 annotations=None):
    m = {"schemaVersion": 2}
    if media_type:
        m["mediaType"] = media_type
    if artifact_type:
        m["artifactType"] = artifact_type
    m["config"] = config
    m["layers"] = layers
    if subject:
        m["subject"] = subject
    if annotations:
        m["annotations"] = annotations
    return m


class Data:
    def __init__(self):
        rnd = random.SystemRandom()
        letters = string.digits + string.ascii_uppercase + string.ascii_lowercase + "-"
        blob_digest_env = os.environ.get("OCI_BLOB_DIGEST", "")
        manifest_digest_env = os.environ.get("OCI_MANIFEST_DIGEST", "")
        self.configs = []
        for _ in range(NUM_WORKFLOWS):
            author = "".join(rnd.choice(letters) for _ in range(16))
            cfg = go_json({"author": author, "architecture": "amd64", "os": "linux",
                           "rootfs": {"type": "layers", "diff_ids": []}})
            self.configs.append({"content": cfg, "length": str(len(cfg)),
                                 "digest": blob_digest_env or sha(cfg)})
        self.layer = base64.b64decode(LAYER_B64)
        self.layer_digest = sha(self.layer)
        self.layer_length = str(len(self.layer))
        layers = [descriptor(MT_LAYER, self.layer_digest, len(self.layer))]
        self.manifests = []
        for i in range(NUM_WORKFLOWS):
            c = self.configs[i]
            doc = manifest_doc(descriptor(MT_CONFIG, c["digest"], len(c["content"]),
                                          data=c["content"], new_field=b"hello world"),
                               layers, media_type=MT_MANIFEST)
            content = go_json(doc)
            self.manifests.append({"content": content, "length": str(len(content)),
                                   "digest": manifest_digest_env or sha(content)})
        c1 = self.configs[1]
        self.empty_layer_manifest = go_json(manifest_doc(
            descriptor(MT_CONFIG, c1["digest"], len(c1["content"]), data=c1["content"],
                       new_field=b"hello world"), []))
        self.empty_layer_manifest_digest = sha(self.empty_layer_manifest)
        self.nonexistent_manifest = ".INVALID_MANIFEST_NAME"
        self.invalid_manifest = b"blablabla"
        self.blob_a = bytes(rnd.getrandbits(8) for _ in range(42))
        self.blob_a_length = str(len(self.blob_a))
        self.blob_a_digest = sha(self.blob_a)
        self.setup_chunked_blob(42)
        self.empty_json = b"{}"
        self.empty_desc = descriptor(MT_EMPTY, sha(self.empty_json), 2)
        self.ref_blob_a = b"NHL Peanut Butter on my NHL bagel"
        self.ref_blob_a_digest, self.ref_blob_a_length = sha(self.ref_blob_a), str(len(self.ref_blob_a))
        self.ref_type_a = "application/vnd.nhl.peanut.butter.bagel"
        self.ref_blob_b = b"NBA Strawberry Jam on my NBA croissant"
        self.ref_blob_b_digest, self.ref_blob_b_length = sha(self.ref_blob_b), str(len(self.ref_blob_b))
        self.ref_type_b = "application/vnd.nba.strawberry.jam.croissant"
        self.ann_key = "org.opencontainers.conformance.test"
        self.ann_values = {}
        m4, m3 = self.manifests[4], self.manifests[3]
        subj4 = descriptor(MT_MANIFEST, sha(m4["content"]), len(m4["content"]))
        subj3 = descriptor(MT_MANIFEST, sha(m3["content"]), len(m3["content"]))

        def mk(doc, ann=None):
            content = go_json(doc)
            d = sha(content)
            if ann:
                self.ann_values[d] = ann
            return content, d

        self.refs_a_config, self.refs_a_config_digest = mk(manifest_doc(
            descriptor(self.ref_type_a, self.ref_blob_a_digest, len(self.ref_blob_a)),
            [self.empty_desc], media_type=MT_MANIFEST, subject=subj4,
            annotations={self.ann_key: "test config a"}), "test config a")
        self.refs_b_config, self.refs_b_config_digest = mk(manifest_doc(
            descriptor(self.ref_type_b, self.ref_blob_b_digest, len(self.ref_blob_b)),
            [self.empty_desc], media_type=MT_MANIFEST, subject=subj4,
            annotations={self.ann_key: "test config b"}), "test config b")
        self.refs_a_layer, self.refs_a_layer_digest = mk(manifest_doc(
            self.empty_desc, [descriptor(self.ref_type_a, self.ref_blob_a_digest, len(self.ref_blob_a))],
            media_type=MT_MANIFEST, artifact_type=self.ref_type_a, subject=subj4,
            annotations={self.ann_key: "test layer a"}), "test layer a")
        self.refs_b_layer, self.refs_b_layer_digest = mk(manifest_doc(
            self.empty_desc, [descriptor(self.ref_type_b, self.ref_blob_b_digest, len(self.ref_blob_b))],
            media_type=MT_MANIFEST, artifact_type=self.ref_type_b, subject=subj4,
            annotations={self.ann_key: "test layer b"}), "test layer b")
        self.refs_c_layer, self.refs_c_layer_digest = mk(manifest_doc(
            self.empty_desc, [descriptor(self.ref_type_b, self.ref_blob_b_digest, len(self.ref_blob_b))],
            media_type=MT_MANIFEST, artifact_type=self.ref_type_b, subject=subj3))
        self.ref_type_index = "application/vnd.food.stand"
        idx = {"schemaVersion": 2, "mediaType": MT_INDEX, "artifactType": self.ref_type_index,
               "manifests": [descriptor(MT_MANIFEST, self.refs_a_config_digest, len(self.refs_a_config)),
                             descriptor(MT_MANIFEST, self.refs_a_layer_digest, len(self.refs_a_layer))],
               "subject": subj4, "annotations": {self.ann_key: "test index"}}
        self.refs_index, self.refs_index_digest = mk(idx, "test index")
        self.dummy_digest = sha(b"hello world")

    def setup_chunked_blob(self, size):
        rnd = random.SystemRandom()
        self.blob_b = bytes(rnd.getrandbits(8) for _ in range(size))
        self.blob_b_digest = sha(self.blob_b)
        cut = size // 2 + 1
        self.chunk1, self.chunk2 = self.blob_b[:cut], self.blob_b[cut:]
        self.chunk1_length, self.chunk2_length = str(len(self.chunk1)), str(len(self.chunk2))
        self.chunk1_range = "0-%d" % (len(self.chunk1) - 1)
        self.chunk2_range = "%d-%d" % (len(self.chunk1), len(self.blob_b) - 1)


def env_bool(name):
    # strconv.ParseBool
    return os.environ.get(name, "") in ("1", "t", "T", "TRUE", "true", "True")


# --------------------------------------------------------------------------------------------
# The suite
# --------------------------------------------------------------------------------------------

class Suite:
    def __init__(self, client, data, runner, variant):
        self.c, self.d, self.r, self.variant = client, data, runner, variant
        self.crossmount = os.environ.get("OCI_CROSSMOUNT_NAMESPACE") or "conformance-00000000-0000-4000-8000-000000000000"
        self.run_pull_setup = not (os.environ.get("OCI_TAG_NAME") and os.environ.get("OCI_MANIFEST_DIGEST")
                                   and os.environ.get("OCI_BLOB_DIGEST"))
        self.run_push_setup = True
        self.run_discovery_setup = not os.environ.get("OCI_TAG_LIST")
        self.run_management_setup = True
        self.delete_manifest_before_blobs = True
        if "OCI_DELETE_MANIFEST_BEFORE_BLOBS" in os.environ:
            self.delete_manifest_before_blobs = env_bool("OCI_DELETE_MANIFEST_BEFORE_BLOBS")
        self.run_auto_crossmount = "OCI_AUTOMATIC_CROSSMOUNT" in os.environ
        self.auto_crossmount = env_bool("OCI_AUTOMATIC_CROSSMOUNT")

    # ---- helpers from setup.go ------------------------------------------------------------

    def push_blob(self, digest, content, length, refs, mtype="application/octet-stream"):
        r = self.c.do("POST", "/v2/<name>/blobs/uploads/")
        expect_status(r, (202, 201), "pushBlob POST /blobs/uploads/")
        r2 = self.c.do("PUT", r.relative_location(), query={"digest": digest},
                       headers={"Content-Type": mtype, "Content-Length": length}, body=content)
        expect_status(r2, 201, "pushBlob PUT <location>?digest=")
        return refs + [digest]

    def push_manifest(self, refs, content, digest, tag="", subject="", index=False):
        ref = tag or digest
        mt = MT_INDEX if index else MT_MANIFEST
        r = self.c.do("PUT", "/v2/<name>/manifests/<reference>", reference=ref,
                      headers={"Content-Type": mt}, body=content)
        expect_status(r, 201, "pushManifest PUT /manifests/%s" % ref)
        expect(r.header("Location") != "", "pushManifest: Location header not empty", r)
        expect(r.header("OCI-Subject") in (subject, ""),
               "pushManifest: OCI-Subject is %r or empty" % subject, r)
        refs = refs + [ref]
        if tag:
            refs = refs + [digest]
        return refs

    def delete_manifest(self, ref):
        r = self.c.do("GET", "/v2/<name>/manifests/<reference>", reference=ref)
        if r.status == 200:
            r2 = self.c.do("DELETE", "/v2/<name>/manifests/<reference>", reference=ref)
            expect_status(r2, (202, 405, 404), "deleteManifest DELETE /manifests/%s" % ref)
            # the suite's path says "<ref>", which reggie does not substitute: the request
            # really goes to /v2/<name>/manifests/%3Cref%3E
            r3 = self.c.do("GET", "/v2/<name>/manifests/<ref>", reference=ref)
            expect_status(r3, 404, "deleteManifest GET /manifests/<ref> (literal, after deleting %s)" % ref)

    def delete_manifests(self, refs):
        for ref in reversed(refs):
            self.delete_manifest(ref)

    def delete_blob(self, ref):
        if "/" in ref:
            parts = ref.split("/")
            r = self.c.do("DELETE", "/v2/<name>/blobs/<reference>", name=parts[0], reference=parts[1])
        else:
            r = self.c.do("DELETE", "/v2/<name>/blobs/<reference>", reference=ref)
        expect_status(r, (202, 404, 400, 405), "deleteBlob DELETE /blobs/%s" % ref)

    def delete_blobs(self, refs):
        for ref in reversed(refs):
            self.delete_blob(ref)

    def raw_push_blob(self, digest, content, length, check_post=False):
        # the release-era inline form: POST (status unchecked), PUT, 2xx
        r = self.c.do("POST", "/v2/<name>/blobs/uploads/")
        r2 = self.c.do("PUT", r.relative_location(), query={"digest": digest},
                       headers={"Content-Type": "application/octet-stream", "Content-Length": length},
                       body=content)
        expect_status(r2, TWO_XX, "PUT <location>?digest=")
        return r2

    # ---- 01_pull_test.go --------------------------------------------------------------

    def pull(self):
        d, c, S = self.d, self.c, self.r.spec
        W, F = "Pull", "01_pull_test.go"
        st = {"tag": "", "blobs": [], "manifests": []}
        latest = self.variant == "latest"

        def setup_blob(i):
            def f():
                run_only_if(self.run_pull_setup)
                cfg = d.configs[i]
                if latest:
                    st["blobs"] = self.push_blob(cfg["digest"], cfg["content"], cfg["length"], st["blobs"])
                else:
                    self.raw_push_blob(cfg["digest"], cfg["content"], cfg["length"])
            return f

        def setup_layer():
            run_only_if(self.run_pull_setup)
            if latest:
                st["blobs"] = self.push_blob(d.layer_digest, d.layer, d.layer_length, st["blobs"])
            else:
                self.raw_push_blob(d.layer_digest, d.layer, d.layer_length)

        def setup_manifest0():
            run_only_if(self.run_pull_setup)
            st["tag"] = "tagtest0"
            m = d.manifests[0]
            if latest:
                st["manifests"] = self.push_manifest(st["manifests"], m["content"], m["digest"], tag=st["tag"])
            else:
                r = c.do("PUT", "/v2/<name>/manifests/<reference>", reference=st["tag"],
                         headers={"Content-Type": MT_MANIFEST}, body=m["content"])
                expect_status(r, TWO_XX)

        def setup_manifest1():
            run_only_if(self.run_pull_setup)
            m = d.manifests[1]
            if latest:
                st["manifests"] = self.push_manifest(st["manifests"], m["content"], m["digest"])
            else:
                r = c.do("PUT", "/v2/<name>/manifests/<reference>", reference=m["digest"],
                         headers={"Content-Type": MT_MANIFEST}, body=m["content"])
                expect_status(r, TWO_XX)

        def tag_from_env():
            run_only_if_not(self.run_pull_setup)
            if os.environ.get("OCI_TAG_NAME"):
                st["tag"] = os.environ["OCI_TAG_NAME"]

        S(W, "Setup", "Populate registry with test blob", F, setup_blob(0))
        S(W, "Setup", "Populate registry with test blob", F, setup_blob(1))
        S(W, "Setup", "Populate registry with test layer", F, setup_layer)
        S(W, "Setup", "Populate registry with test manifest", F, setup_manifest0)
        S(W, "Setup", "Populate registry with test manifest", F, setup_manifest1)
        S(W, "Setup", "Get tag name from environment", F, tag_from_env)

        def head_missing_blob():
            r = c.do("HEAD", "/v2/<name>/blobs/<digest>", digest=d.dummy_digest)
            expect_status(r, 404)

        def head_blob():
            r = c.do("HEAD", "/v2/<name>/blobs/<digest>", digest=d.configs[0]["digest"])
            expect_status(r, 200)
            h = r.header("Docker-Content-Digest")
            if h:
                expect(h == d.configs[0]["digest"], "Docker-Content-Digest == %s" % d.configs[0]["digest"], r)

        def get_missing_blob():
            r = c.do("GET", "/v2/<name>/blobs/<digest>", digest=d.dummy_digest)
            expect_status(r, 404)

        def get_blob():
            r = c.do("GET", "/v2/<name>/blobs/<digest>", digest=d.configs[0]["digest"])
            expect_status(r, 200)

        S(W, "Pull blobs", "HEAD request to nonexistent blob should result in 404 response", F, head_missing_blob)
        S(W, "Pull blobs", "HEAD request to existing blob should yield 200", F, head_blob)
        S(W, "Pull blobs", "GET nonexistent blob should result in 404 response", F, get_missing_blob)
        S(W, "Pull blobs", "GET request to existing blob URL should yield 200", F, get_blob)

        acc = {"Accept": MT_MANIFEST}

        def head_missing_manifest():
            r = c.do("HEAD", "/v2/<name>/manifests/<reference>", reference=d.nonexistent_manifest)
            expect_status(r, 404)

        def head_manifest(i):
            def f():
                r = c.do("HEAD", "/v2/<name>/manifests/<digest>", digest=d.manifests[i]["digest"], headers=acc)
                expect_status(r, 200)
                h = r.header("Docker-Content-Digest")
                if h:
                    expect(h == d.manifests[i]["digest"], "Docker-Content-Digest == manifests[%d]" % i, r)
            return f

        def head_tag():
            expect(st["tag"] != "", "tag not empty")
            r = c.do("HEAD", "/v2/<name>/manifests/<reference>", reference=st["tag"], headers=acc)
            expect_status(r, 200)
            h = r.header("Docker-Content-Digest")
            if h:
                expect(h == d.manifests[0]["digest"], "Docker-Content-Digest == manifests[0]", r)

        def get_missing_manifest():
            r = c.do("GET", "/v2/<name>/manifests/<reference>", reference=d.nonexistent_manifest)
            expect_status(r, 404)

        def get_manifest(i):
            def f():
                r = c.do("GET", "/v2/<name>/manifests/<digest>", digest=d.manifests[i]["digest"], headers=acc)
                expect_status(r, 200)
            return f

        def get_tag():
            expect(st["tag"] != "", "tag not empty")
            r = c.do("GET", "/v2/<name>/manifests/<reference>", reference=st["tag"], headers=acc)
            expect_status(r, 200)

        P = "Pull manifests"
        S(W, P, "HEAD request to nonexistent manifest should return 404", F, head_missing_manifest)
        S(W, P, "HEAD request to manifest[0] path (digest) should yield 200 response", F, head_manifest(0))
        S(W, P, "HEAD request to manifest[1] path (digest) should yield 200 response", F, head_manifest(1))
        S(W, P, "HEAD request to manifest path (tag) should yield 200 response", F, head_tag)
        S(W, P, "GET nonexistent manifest should return 404", F, get_missing_manifest)
        S(W, P, "GET request to manifest[0] path (digest) should yield 200 response", F, get_manifest(0))
        S(W, P, "GET request to manifest[1] path (digest) should yield 200 response", F, get_manifest(1))
        S(W, P, "GET request to manifest path (tag) should yield 200 response", F, get_tag)

        def error_body():
            r = c.do("GET", "/v2/<name>/manifests/<reference>", reference="sha256:totallywrong",
                     headers={"Content-Type": MT_MANIFEST}, body=d.invalid_manifest)
            expect_status(r, (400, 404))
            if r.status == 400:
                try:
                    errs = json.loads(r.body)["errors"]
                except Exception:
                    raise Fail("body parses as {\"errors\": [...]}", r)
                expect(errs, "errors not empty", r)
                expect(errs[0].get("code") in ERROR_CODES, "errors[0].code is an OCI error code", r)

        S(W, "Error codes", "400 response body should contain OCI-conforming JSON message", F, error_body)

        T = "Teardown"
        if latest:
            def del_manifests():
                run_only_if(self.run_pull_setup)
                self.delete_manifests(st["manifests"])

            def del_blobs():
                run_only_if(self.run_pull_setup)
                self.delete_blobs(st["blobs"])

            if self.delete_manifest_before_blobs:
                S(W, T, "Delete manifests created in setup", F, del_manifests)
            S(W, T, "Delete blobs created in setup", F, del_blobs)
            if not self.delete_manifest_before_blobs:
                S(W, T, "Delete manifests created in setup", F, del_manifests)
        else:
            def del_manifest(i):
                def f():
                    run_only_if(self.run_pull_setup)
                    r = c.do("DELETE", "/v2/<name>/manifests/<digest>", digest=d.manifests[i]["digest"])
                    expect_status(r, list(TWO_XX) + [405])
                return f

            def del_blob(dg):
                def f():
                    run_only_if(self.run_pull_setup)
                    r = c.do("DELETE", "/v2/<name>/blobs/<digest>", digest=dg)
                    expect_status(r, list(TWO_XX) + [404, 405])
                return f

            if self.delete_manifest_before_blobs:
                S(W, T, "Delete manifest[0] created in setup", F, del_manifest(0))
                S(W, T, "Delete manifest[1] created in setup", F, del_manifest(1))
            S(W, T, "Delete config[0] blob created in setup", F, del_blob(d.configs[0]["digest"]))
            S(W, T, "Delete config[1] blob created in setup", F, del_blob(d.configs[1]["digest"]))
            S(W, T, "Delete layer blob created in setup", F, del_blob(d.layer_digest))
            if not self.delete_manifest_before_blobs:
                S(W, T, "Delete manifest[0] created in setup", F, del_manifest(0))
                S(W, T, "Delete manifest[1] created in setup", F, del_manifest(1))

    # ---- 02_push_test.go ------------------------------------------------------------------

    def push(self):
        d, c, S = self.d, self.c, self.r.spec
        W, F = "Push", "02_push_test.go"
        st = {"last": None, "prev": None, "empty_ref": ""}
        octet = {"Content-Type": "application/octet-stream"}

        # Setup: no specs
        B = "Blob Upload Streamed"

        def streamed_patch():
            r = c.do("POST", "/v2/<name>/blobs/uploads/")
            expect(r.header("Location") != "", "POST /blobs/uploads/: Location header not empty", r)
            r2 = c.do("PATCH", r.relative_location(), headers=octet, body=d.blob_a)
            expect_status(r2, 202)
            st["last"] = r2

        def streamed_put():
            expect(st["last"] is not None, "lastResponse not nil")
            r = c.do("PUT", st["last"].relative_location(), query={"digest": d.blob_a_digest},
                     headers=dict(octet, **{"Content-Length": d.blob_a_length}))
            expect_status(r, 201)
            expect(r.header("Location") != "", "Location header not empty", r)

        S(W, B, "PATCH request with blob in body should yield 202 response", F, streamed_patch)
        S(W, B, "PUT request to session URL with digest should yield 201 response", F, streamed_put)

        M = "Blob Upload Monolithic"
        cfg1 = d.configs[1]

        def mono_get_missing():
            r = c.do("GET", "/v2/<name>/blobs/<digest>", digest=d.dummy_digest)
            expect_status(r, 404)

        def mono_post_digest():
            r = c.do("POST", "/v2/<name>/blobs/uploads/", query={"digest": cfg1["digest"]},
                     headers=dict(octet, **{"Content-Length": cfg1["length"]}), body=cfg1["content"])
            expect(r.header("Location") != "", "Location header not empty", r)
            expect_status(r, (201, 202))
            st["last"] = r

        def mono_get_after_post():
            expect(st["last"] is not None, "lastResponse not nil")
            r = c.do("GET", "/v2/<name>/blobs/<digest>", digest=cfg1["digest"])
            if st["last"].status == 202:
                expect_status(r, 404, "prior POST answered 202")
            else:
                expect_status(r, 200, "prior POST answered %d" % st["last"].status)

        def mono_post_session():
            r = c.do("POST", "/v2/<name>/blobs/uploads/")
            expect_status(r, 202)
            st["last"] = r

        def mono_put():
            r = c.do("PUT", st["last"].relative_location(), query={"digest": cfg1["digest"]},
                     headers=dict(octet, **{"Content-Length": cfg1["length"]}), body=cfg1["content"])
            expect(r.header("Location") != "", "Location header not empty", r)
            expect_status(r, 201)

        def mono_get():
            r = c.do("GET", "/v2/<name>/blobs/<digest>", digest=cfg1["digest"])
            expect_status(r, 200)

        def mono_put_layer():
            r = c.do("POST", "/v2/<name>/blobs/uploads/")
            r2 = c.do("PUT", r.relative_location(), query={"digest": d.layer_digest},
                      headers=dict(octet, **{"Content-Length": d.layer_length}), body=d.layer)
            expect(r2.header("Location") != "", "Location header not empty", r2)
            expect_status(r2, 201)

        def mono_get_layer():
            r = c.do("GET", "/v2/<name>/blobs/<digest>", digest=d.layer_digest)
            expect_status(r, 200)

        S(W, M, "GET nonexistent blob should result in 404 response", F, mono_get_missing)
        S(W, M, "POST request with digest and blob should yield a 201 or 202", F, mono_post_digest)
        S(W, M, "GET request to blob URL from prior request should yield 200 or 404 based on response code",
          F, mono_get_after_post)
        S(W, M, "POST request should yield a session ID", F, mono_post_session)
        S(W, M, "PUT upload of a blob should yield a 201 Response", F, mono_put)
        S(W, M, "GET request to existing blob should yield 200 response", F, mono_get)
        S(W, M, "PUT upload of a layer blob should yield a 201 Response", F, mono_put_layer)
        S(W, M, "GET request to existing layer should yield 200 response", F, mono_get_layer)

        C = "Blob Upload Chunked"

        def out_of_order():
            r = c.do("POST", "/v2/<name>/blobs/uploads/", headers={"Content-Length": "0"})
            expect(r.header("Location") != "", "Location header not empty", r)
            mn = r.header("OCI-Chunk-Min-Length")
            if mn:
                try:
                    mn = int(mn)
                except ValueError:
                    raise Fail("OCI-Chunk-Min-Length is an integer", r)
                if mn > len(d.chunk1):
                    d.setup_chunked_blob(mn * 2 - 2)
            r2 = c.do("PATCH", r.relative_location(),
                      headers=dict(octet, **{"Content-Length": d.chunk2_length, "Content-Range": d.chunk2_range}),
                      body=d.chunk2)
            expect_status(r2, 416)

        def first_chunk():
            r = c.do("POST", "/v2/<name>/blobs/uploads/", headers={"Content-Length": "0"})
            expect(r.header("Location") != "", "Location header not empty", r)
            st["prev"] = r
            r2 = c.do("PATCH", r.relative_location(),
                      headers=dict(octet, **{"Content-Length": d.chunk1_length, "Content-Range": d.chunk1_range}),
                      body=d.chunk1)
            expect_status(r2, 202)
            expect(r2.header("Range") == d.chunk1_range, "Range header == %r" % d.chunk1_range, r2)
            st["last"] = r2

        def retry_chunk():
            r = c.do("PATCH", st["prev"].relative_location(),
                     headers=dict(octet, **{"Content-Length": d.chunk1_length, "Content-Range": d.chunk1_range}),
                     body=d.chunk1)
            expect_status(r, 416)

        def stale_get():
            r = c.do("GET", st["prev"].relative_location())
            expect_status(r, 204)
            expect(r.header("Location") != "", "Location header not empty", r)
            expect(r.header("Range") == d.chunk1_range, "Range header == %r" % d.chunk1_range, r)
            st["last"] = r

        def second_chunk():
            r = c.do("PATCH", st["last"].relative_location(),
                     headers={"Content-Length": d.chunk2_length, "Content-Range": d.chunk2_range,
                              "Content-Type": "application/octet-stream"}, body=d.chunk2)
            expect_status(r, 202)
            expect(r.header("Location") != "", "Location header not empty", r)
            st["last"] = r

        def chunk_put():
            r = c.do("PUT", st["last"].relative_location(), query={"digest": d.blob_b_digest},
                     headers={"Content-Length": "0", "Content-Type": "application/octet-stream"})
            expect_status(r, 201)
            expect(r.header("Location") != "", "Location header not empty", r)

        S(W, C, "Out-of-order blob upload should return 416", F, out_of_order)
        S(W, C, "PATCH request with first chunk should return 202", F, first_chunk)
        S(W, C, "Retry previous blob chunk should return 416", F, retry_chunk)
        S(W, C, "Get on stale blob upload should return 204 with a range and location", F, stale_get)
        S(W, C, "PATCH request with second chunk should return 202", F, second_chunk)
        S(W, C, "PUT request with digest should return 201", F, chunk_put)

        X = "Cross-Repository Blob Mount"
        xm = self.crossmount

        def mount_no_from():
            r = c.do("POST", "/v2/<name>/blobs/uploads/", name=xm, query={"mount": d.dummy_digest})
            expect_status(r, 202)
            expect(r.absolute_location() != "", "Location header not empty", r)

        def mount_from():
            r = c.do("POST", "/v2/<name>/blobs/uploads/", name=xm,
                     query={"mount": d.blob_a_digest, "from": c.namespace})
            expect_status(r, (201, 202))
            st["last"] = r

        def mount_get():
            run_only_if(st["last"] is not None and st["last"].status == 201)
            want = "/v2/%s/blobs/%s" % (xm, d.blob_a_digest)
            expect(st["last"].relative_location() == want, "mount Location path == %r" % want, st["last"])
            r = c.do("GET", st["last"].relative_location())
            expect_status(r, 200)

        def mount_session():
            run_only_if(st["last"] is not None and st["last"].status == 202)
            pre = "/v2/%s/blobs/uploads/" % xm
            expect(st["last"].relative_location().startswith(pre), "Location has prefix %r" % pre, st["last"])

        def auto_on():
            run_only_if(self.run_auto_crossmount)
            run_only_if(st["last"] is not None and st["last"].status == 201)
            run_only_if(self.auto_crossmount)
            r = c.do("POST", "/v2/<name>/blobs/uploads/", name=xm, query={"mount": d.blob_a_digest})
            expect_status(r, 201)

        def auto_off():
            run_only_if(self.run_auto_crossmount)
            run_only_if(st["last"] is not None and st["last"].status == 201)
            run_only_if_not(self.auto_crossmount)
            r = c.do("POST", "/v2/<name>/blobs/uploads/", name=xm, query={"mount": d.blob_a_digest})
            expect_status(r, 202)

        S(W, X, "Cross-mounting of a blob without the from argument should yield session id", F, mount_no_from)
        S(W, X, "POST request to mount another repository's blob should return 201 or 202", F, mount_from)
        S(W, X, "GET request to test digest within cross-mount namespace should return 200", F, mount_get)
        S(W, X, "Cross-mounting of nonexistent blob should yield session id", F, mount_session)
        S(W, X, "Cross-mounting without from, and automatic content discovery enabled should return a 201",
          F, auto_on)
        S(W, X, "Cross-mounting without from, and automatic content discovery disabled should return a 202",
          F, auto_off)

        U = "Manifest Upload"

        def mu_get_missing():
            r = c.do("GET", "/v2/<name>/manifests/<reference>", reference=d.nonexistent_manifest)
            expect_status(r, 404)

        def mu_put():
            for i in range(4):
                r = c.do("PUT", "/v2/<name>/manifests/<reference>", reference="test%d" % i,
                         headers={"Content-Type": MT_MANIFEST}, body=d.manifests[1]["content"])
                expect(r.header("Location") != "", "Location header not empty (tag test%d)" % i, r)
                expect_status(r, 201, "tag test%d" % i)

        def mu_empty_layers():
            r = c.do("PUT", "/v2/<name>/manifests/<reference>", reference="emptylayer",
                     headers={"Content-Type": MT_MANIFEST}, body=d.empty_layer_manifest)
            if r.status == 201:
                st["empty_ref"] = r.header("Location")
                expect(st["empty_ref"] != "", "Location header not empty", r)
            else:
                self.r.warn("image manifest with no layers is not supported (PUT answered %d: %s)"
                            % (r.status, r.text()[:200]))

        def mu_get():
            r = c.do("GET", "/v2/<name>/manifests/<digest>", digest=d.manifests[1]["digest"],
                     headers={"Accept": MT_MANIFEST})
            expect_status(r, 200)

        S(W, U, "GET nonexistent manifest should return 404", F, mu_get_missing)
        S(W, U, "PUT should accept a manifest upload", F, mu_put)
        S(W, U, "Registry should accept a manifest upload with no layers", F, mu_empty_layers)
        S(W, U, "GET request to manifest URL (digest) should yield 200 response", F, mu_get)

        T = "Teardown"

        def del_manifest():
            run_only_if(self.run_push_setup)
            r = c.do("DELETE", "/v2/<name>/manifests/<digest>", digest=d.manifests[1]["digest"])
            expect_status(r, list(TWO_XX) + [405])
            if st["empty_ref"]:
                r = c.do("DELETE", "/v2/<name>/manifests/<reference>", reference=d.empty_layer_manifest_digest)
                expect_status(r, list(TWO_XX) + [405], "DELETE empty-layer manifest")

        def del_blob(dg):
            def f():
                run_only_if(self.run_push_setup)
                r = c.do("DELETE", "/v2/<name>/blobs/<digest>", digest=dg)
                expect_status(r, list(TWO_XX) + [404, 405])
            return f

        if self.delete_manifest_before_blobs:
            S(W, T, "Delete manifest created in tests", F, del_manifest)
        S(W, T, "Delete config blob created in tests", F, del_blob(cfg1["digest"]))
        S(W, T, "Delete layer blob created in setup", F, del_blob(d.layer_digest))
        if not self.delete_manifest_before_blobs:
            S(W, T, "Delete manifest created in tests", F, del_manifest)

    # ---- 03_discovery_test.go ---------------------------------------------------------

    def discovery(self):
        d, c, S = self.d, self.c, self.r.spec
        W, F = "Content Discovery", "03_discovery_test.go"
        latest = self.variant == "latest"
        st = {"num_tags": 4, "tag_list": [], "blobs": [], "manifests": []}
        m2, m3, m4 = d.manifests[2], d.manifests[3], d.manifests[4]
        setup_ok = self.run_discovery_setup

        def tag_list(resp):
            try:
                tags = json.loads(resp.body).get("tags")
                return tags if isinstance(tags, list) else []
            except Exception:
                return []

        def s_blob():
            run_only_if(setup_ok)
            cfg = d.configs[2]
            if latest:
                st["blobs"] = self.push_blob(cfg["digest"], cfg["content"], cfg["length"], st["blobs"])
            else:
                self.raw_push_blob(cfg["digest"], cfg["content"], cfg["length"])

        def s_layer():
            run_only_if(setup_ok)
            if latest:
                st["blobs"] = self.push_blob(d.layer_digest, d.layer, d.layer_length, st["blobs"])
            else:
                self.raw_push_blob(d.layer_digest, d.layer, d.layer_length)

        def s_tags():
            run_only_if(setup_ok)
            for i in range(st["num_tags"]):
                names = ["test%d" % i, "TEST%d" % i] if latest else ["test%d" % i]
                for tag in names:
                    st["tag_list"].append(tag)
                    if latest:
                        st["manifests"] = self.push_manifest(st["manifests"], m2["content"], m2["digest"], tag=tag)
                    else:
                        r = c.do("PUT", "/v2/<name>/manifests/<reference>", reference=tag,
                                 headers={"Content-Type": MT_MANIFEST}, body=m2["content"])
                        expect_status(r, TWO_XX, "PUT tag %s" % tag)
            r = c.do("GET", "/v2/<name>/tags/list")
            st["tag_list"] = tag_list(r)

        def s_tags_env():
            run_only_if_not(setup_ok)
            st["tag_list"] = os.environ.get("OCI_TAG_LIST", "").split(",")

        def refs_setup():
            run_only_if(setup_ok)
            expect(d.empty_desc["digest"] ==
                   "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
                   "empty JSON descriptor digest")

            def blob(dg, content, length):
                if latest:
                    st["blobs"] = self.push_blob(dg, content, length, st["blobs"])
                else:
                    self.raw_push_blob(dg, content, length)

            def man(content, dg, subject="", tag="", index=False):
                if latest:
                    st["manifests"] = self.push_manifest(st["manifests"], content, dg, tag=tag,
                                                         subject=subject, index=index)
                else:
                    r = c.do("PUT", "/v2/<name>/manifests/<reference>", reference=tag or dg,
                             headers={"Content-Type": MT_INDEX if index else MT_MANIFEST}, body=content)
                    expect_status(r, TWO_XX, "PUT manifest %s" % (tag or dg))
                    if subject:
                        expect(r.header("OCI-Subject") == subject, "OCI-Subject == %s" % subject, r)

            blob(d.empty_desc["digest"], d.empty_json, "2")
            blob(d.ref_blob_a_digest, d.ref_blob_a, d.ref_blob_a_length)
            man(d.refs_a_config, d.refs_a_config_digest, subject=m4["digest"])
            man(d.refs_a_layer, d.refs_a_layer_digest, subject=m4["digest"])
            man(d.refs_index, d.refs_index_digest, subject=m4["digest"], index=True)
            blob(d.configs[4]["digest"], d.configs[4]["content"], d.configs[4]["length"])
            blob(d.layer_digest, d.layer, d.layer_length)
            man(m4["content"], m4["digest"], tag="tagtest0")
            blob(d.ref_blob_b_digest, d.ref_blob_b, d.ref_blob_b_length)
            man(d.refs_b_config, d.refs_b_config_digest, subject=m4["digest"])
            man(d.refs_b_layer, d.refs_b_layer_digest, subject=m4["digest"])
            man(d.refs_c_layer, d.refs_c_layer_digest, subject=m3["digest"])

        S(W, "Setup", "Populate registry with test blob", F, s_blob)
        S(W, "Setup", "Populate registry with test layer", F, s_layer)
        S(W, "Setup", "Populate registry with test tags", F, s_tags)
        S(W, "Setup", "Populate registry with test tags (no push)", F, s_tags_env)
        S(W, "Setup", "References setup", F, refs_setup)

        L = "Test content discovery endpoints (listing tags)"

        def list_tags():
            r = c.do("GET", "/v2/<name>/tags/list")
            expect_status(r, 200)
            st["tag_list"] = tag_list(r)
            st["num_tags"] = len(st["tag_list"])
            if latest:
                tl = st["tag_list"]
                lexical = sorted(tl, key=lambda t: t.lower())  # stable, like sort.SliceStable
                ascii_ = sorted(tl)
                expect(tl == lexical or tl == ascii_,
                       "tags in lexical (case-insensitive) or ASCII order: %s" % tl, r)

        def list_n():
            n = st["num_tags"] // 2
            r = c.do("GET", "/v2/<name>/tags/list", query={"n": str(n)})
            expect_status(r, 200)
            st["tag_list"] = tag_list(r)
            expect(len(st["tag_list"]) == n, "len(tags) == n == %d" % n, r)

        def list_last():
            n = st["num_tags"] // 2
            r = c.do("GET", "/v2/<name>/tags/list", query={"n": str(n)})
            if latest:
                expect_status(r, 200)
            st["tag_list"] = tag_list(r)
            if n - 1 < 0 or n - 1 >= len(st["tag_list"]):
                raise Fail("tagList[n-1] exists (Go would panic: index out of range), n=%d" % n, r)
            last = st["tag_list"][n - 1]
            r2 = c.do("GET", "/v2/<name>/tags/list", query={"n": str(n), "last": last})
            expect_status(r2, 200)
            if latest:
                st["tag_list"] = tag_list(r2)
                expect(len(st["tag_list"]) <= n, "len(tags) <= %d" % n, r2)
                expect(last not in st["tag_list"], "tags do not contain last=%r" % last, r2)
            else:
                # the release version re-checks the first page (its own assertion is vacuous)
                expect(len(st["tag_list"]) <= n, "len(tags) <= %d" % n, r)
                expect(last in st["tag_list"], "first page contains %r" % last, r)

        S(W, L, "GET request to list tags should yield 200 response and be in sorted order" if latest
          else "GET request to list tags should yield 200 response", F, list_tags)
        S(W, L, "GET number of tags should be limitable by `n` query parameter", F, list_n)
        S(W, L, "GET start of tag is set by `last` query parameter", F, list_last)

        R = "Test content discovery endpoints (listing references)"

        def index_of(r):
            expect_status(r, 200)
            expect(r.header("Content-Type") == MT_INDEX, "Content-Type == %s" % MT_INDEX, r)
            try:
                idx = json.loads(r.body)
                mans = idx.get("manifests") or []
                expect(isinstance(mans, list), "manifests is a list", r)
            except (ValueError, AttributeError):
                raise Fail("body unmarshals as an image index", r)
            return mans

        def check_annotations(r, mans):
            for m in mans:
                ann = m.get("annotations") or {}
                expect(len(ann) == 1, "every descriptor has exactly 1 annotation (%s has %d)"
                       % (m.get("digest"), len(ann)), r)
                want = d.ann_values.get(m.get("digest"), "")
                expect(ann.get(d.ann_key) == want, "annotation %s of %s == %r" % (d.ann_key, m.get("digest"), want), r)

        def ref_missing_blob():
            r = c.do("GET", "/v2/<name>/referrers/<digest>", digest=d.dummy_digest)
            mans = index_of(r)
            expect(len(mans) == 0, "no manifests", r)

        def ref_existing():
            r = c.do("GET", "/v2/<name>/referrers/<digest>", digest=m4["digest"])
            mans = index_of(r)
            expect(len(mans) == 5, "5 manifests", r)
            expect(mans[0].get("digest") != mans[1].get("digest"), "manifests[0] != manifests[1]", r)
            check_annotations(r, mans)

        def ref_filter():
            r = c.do("GET", "/v2/<name>/referrers/<digest>", digest=m4["digest"],
                     query={"artifactType": d.ref_type_a})
            mans = index_of(r)
            if r.header("OCI-Filters-Applied"):
                expect(len(mans) == 2, "2 manifests after the artifactType filter", r)
                expect(r.header("OCI-Filters-Applied") == "artifactType", "OCI-Filters-Applied == artifactType", r)
                check_annotations(r, mans)
            else:
                expect(len(mans) == 5, "5 manifests (no filter applied)", r)
                check_annotations(r, mans)
                self.r.warn("filtering by artifact-type is not implemented")

        def ref_missing_manifest():
            r = c.do("GET", "/v2/<name>/referrers/<digest>", digest=m3["digest"])
            mans = index_of(r)
            expect(len(mans) == 1, "1 manifest", r)
            expect(mans[0].get("digest") == d.refs_c_layer_digest, "manifests[0] is the C artifact", r)

        S(W, R, "GET request to nonexistent blob should result in empty 200 response", F, ref_missing_blob)
        S(W, R, "GET request to existing blob should yield 200", F, ref_existing)
        S(W, R, "GET request to existing blob with filter should yield 200", F, ref_filter)
        S(W, R, "GET request to missing manifest should yield 200", F, ref_missing_manifest)

        T = "Teardown"
        if latest:
            def del_manifests():
                run_only_if(setup_ok)
                self.delete_manifests(st["manifests"])

            def del_blobs():
                run_only_if(setup_ok)
                self.delete_blobs(st["blobs"])

            if self.delete_manifest_before_blobs:
                S(W, T, "Delete created manifest & associated tags", F, del_manifests)
            S(W, T, "Delete blobs created in tests", F, del_blobs)
            if not self.delete_manifest_before_blobs:
                S(W, T, "Delete created manifest & associated tags", F, del_manifests)
        else:
            refs = [d.refs_index_digest, m2["digest"], m4["digest"], d.refs_a_config_digest,
                    d.refs_a_layer_digest, "tagtest0", d.refs_b_config_digest, d.refs_b_layer_digest,
                    d.refs_c_layer_digest]

            def del_manifests():
                run_only_if(setup_ok)
                for ref in refs:
                    # WithDigest on a "<digest>" path, so "tagtest0" goes out as a tag
                    r = c.do("DELETE", "/v2/<name>/manifests/<digest>", digest=ref)
                    expect_status(r, list(TWO_XX) + [405, 404], "DELETE /manifests/%s" % ref)

            def del_blob(dg):
                def f():
                    run_only_if(setup_ok)
                    r = c.do("DELETE", "/v2/<name>/blobs/<digest>", digest=dg)
                    expect_status(r, list(TWO_XX) + [405])
                return f

            def refs_teardown():
                run_only_if(setup_ok)

                def dele(path, **kw):
                    r = c.do("DELETE", path, **kw)
                    expect_status(r, list(TWO_XX) + [405, 404], "DELETE %s" % (kw.get("reference") or kw.get("digest")))

                mpath = "/v2/<name>/manifests/<reference>"
                order = [d.refs_index_digest, d.refs_a_config_digest, d.refs_a_layer_digest]
                if self.delete_manifest_before_blobs:
                    for ref in order:
                        dele(mpath, reference=ref)
                    dele("/v2/<name>/manifests/<digest>", digest=m4["digest"])
                    dele(mpath, reference=d.refs_b_config_digest)
                    dele(mpath, reference=d.refs_b_layer_digest)
                for dg in (d.configs[4]["digest"], d.ref_blob_a_digest, d.ref_blob_b_digest, d.empty_desc["digest"]):
                    dele("/v2/<name>/blobs/<digest>", digest=dg)
                if not self.delete_manifest_before_blobs:
                    for ref in order:
                        dele(mpath, reference=ref)
                    dele("/v2/<name>/manifests/<digest>", digest=m4["digest"])
                    dele(mpath, reference=d.refs_b_config_digest)
                    dele(mpath, reference=d.refs_b_layer_digest)

            if self.delete_manifest_before_blobs:
                S(W, T, "Delete created manifest & associated tags", F, del_manifests)
            S(W, T, "Delete config blob created in tests", F, del_blob(d.configs[2]["digest"]))
            S(W, T, "Delete layer blob created in setup", F, del_blob(d.layer_digest))
            if not self.delete_manifest_before_blobs:
                S(W, T, "Delete created manifest & associated tags", F, del_manifests)
            S(W, T, "References teardown", F, refs_teardown)

    # ---- 04_management_test.go ------------------------------------------------------------

    def management(self):
        d, c, S = self.d, self.c, self.r.spec
        W, F = "Content Management", "04_management_test.go"
        st = {"tag": "", "num_tags": 0, "blob_delete_allowed": True}
        cfg3, m3 = d.configs[3], d.manifests[3]
        ok = self.run_management_setup

        def s_config():
            run_only_if(ok)
            self.raw_push_blob(cfg3["digest"], cfg3["content"], cfg3["length"])

        def s_layer():
            run_only_if(ok)
            self.raw_push_blob(d.layer_digest, d.layer, d.layer_length)

        def s_tag():
            run_only_if(ok)
            st["tag"] = "tagtest0"
            r = c.do("PUT", "/v2/<name>/manifests/<reference>", reference=st["tag"],
                     headers={"Content-Type": MT_MANIFEST}, body=m3["content"])
            expect_status(r, TWO_XX)

        def count_tags(r):
            try:
                tags = json.loads(r.body).get("tags") or []
            except Exception:
                raise Fail("tags/list body unmarshals as {name, tags}", r)
            return len(tags)

        def s_count():
            run_only_if(ok)
            r = c.do("GET", "/v2/<name>/tags/list")
            expect_status(r, 200)
            st["num_tags"] = count_tags(r)

        S(W, "Setup", "Populate registry with test config blob", F, s_config)
        S(W, "Setup", "Populate registry with test layer", F, s_layer)
        S(W, "Setup", "Populate registry with test tag", F, s_tag)
        S(W, "Setup", "Check how many tags there are before anything gets deleted", F, s_count)

        M = "Manifest delete"

        def del_tag():
            r = c.do("DELETE", "/v2/<name>/manifests/<reference>", reference=st["tag"])
            expect_status(r, (400, 202, 405))
            if r.status == 400:
                try:
                    errs = json.loads(r.body)["errors"]
                except Exception:
                    raise Fail("400 body parses as OCI errors", r)
                expect(errs and errs[0].get("code") == "UNSUPPORTED", "errors[0].code == UNSUPPORTED", r)

        def del_digest():
            r = c.do("DELETE", "/v2/<name>/manifests/<digest>", digest=m3["digest"])
            expect_status(r, (202, 404))

        def get_deleted():
            r = c.do("GET", "/v2/<name>/manifests/<digest>", digest=m3["digest"])
            expect_status(r, (404, 200))

        def tags_reflect():
            r = c.do("GET", "/v2/<name>/tags/list")
            expect_status(r, 200)
            n = count_tags(r)
            expect(n < st["num_tags"], "fewer tags than before (%d)" % st["num_tags"], r)

        S(W, M, "DELETE request to manifest tag should return 202, unless tag deletion is disallowed (400/405)",
          F, del_tag)
        S(W, M, "DELETE request to manifest (digest) should yield 202 response unless already deleted", F, del_digest)
        S(W, M, "GET request to deleted manifest URL should yield 404 response, unless delete is disallowed",
          F, get_deleted)
        S(W, M, "GET request to tags list should reflect manifest deletion", F, tags_reflect)

        B = "Blob delete"

        def del_blobs():
            run_only_if(ok)
            r = c.do("DELETE", "/v2/<name>/blobs/<digest>", digest=cfg3["digest"])
            expect_status(r, (202, 404, 405), "DELETE config blob")
            r = c.do("DELETE", "/v2/<name>/blobs/<digest>", digest=d.layer_digest)
            expect_status(r, (202, 404, 405), "DELETE layer blob")
            if r.status == 405:
                st["blob_delete_allowed"] = False

        def get_deleted_blob():
            run_only_if(ok)
            run_only_if(st["blob_delete_allowed"])
            r = c.do("GET", "/v2/<name>/blobs/<digest>", digest=cfg3["digest"])
            expect_status(r, 404)

        S(W, B, "DELETE request to blob URL should yield 202 response", F, del_blobs)
        S(W, B, "GET request to deleted blob URL should yield 404 response", F, get_deleted_blob)
        # Teardown: no specs


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--suite", choices=("latest", "v1.1.0"), default="latest")
    ap.add_argument("--auth", choices=("reggie", "basic"), default="reggie")
    ap.add_argument("-v", "--verbose", action="store_true")
    a = ap.parse_args()
    root = os.environ.get("OCI_ROOT_URL", "")
    if not root:
        sys.exit("OCI_ROOT_URL is not set (see the top of this file)")
    client = Client(root, os.environ.get("OCI_NAMESPACE", ""), os.environ.get("OCI_USERNAME", ""),
                    os.environ.get("OCI_PASSWORD", ""), os.environ.get("OCI_AUTH_SCOPE", ""), a.auth,
                    a.verbose or env_bool("OCI_DEBUG"))
    enabled = {w for w, v in (("Pull", "OCI_TEST_PULL"), ("Push", "OCI_TEST_PUSH"),
                              ("Content Discovery", "OCI_TEST_CONTENT_DISCOVERY"),
                              ("Content Management", "OCI_TEST_CONTENT_MANAGEMENT")) if env_bool(v)}
    runner = Runner(enabled, env_bool("OCI_HIDE_SKIPPED_WORKFLOWS"))
    suite = Suite(client, Data(), runner, a.suite)
    print("# OCI Distribution Conformance Tests (python replay, suite=%s, auth=%s)" % (a.suite, a.auth))
    print("# root=%s namespace=%s crossmount=%s" % (root, client.namespace, suite.crossmount))
    suite.pull()
    suite.push()
    suite.discovery()
    suite.management()
    n = runner.counts
    print("\n# %d passed, %d failed, %d skipped (%d specs); %d HTTP requests; %d warnings"
          % (n["PASS"], n["FAIL"], n["SKIP"], sum(n.values()), client.sent, len(runner.warnings)))
    for f in runner.failures:
        print("#   FAILED: %s" % f)
    sys.exit(1 if n["FAIL"] else 0)


if __name__ == "__main__":
    main()
