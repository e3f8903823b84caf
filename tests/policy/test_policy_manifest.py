"""Loading valid manifests, and one test per kind of malformed manifest.

Every malformed case asserts the line the problem is reported at and that the message names
the offending thing and says what to write instead.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from policy_helpers import find, line_of, problems

from trapeze.policy import Manifest, ManifestError, load_manifest

App = Callable[..., Path]

REPO = Path(__file__).resolve().parents[2]

FULL = """
[app]
name = "shop"
policy = "policy.py"

[labels]
bottom = ["public"]
public = ["client:*"]
"client:*" = ["owner"]
owner = ["top"]

[principals.owen]
label = "owner"
token = "dev-owen"

[channels.email]
kind = "smtp"
bound = "public"
host = "127.0.0.1"
port = 2525
sender = "store@example.com"

[channels.images]
kind = "http"
bound = "public"
url_prefixes = ["http://127.0.0.1:8081"]
timeout = 5.0

[functions.a]
handler = "functions/a.py:handler"
timeout = 2.5
memory_mb = 128
env = { STAGE = "dev" }
preload = ["json"]

[functions.b]
handler = "functions.b:handler"

[[routes]]
path = "/a/{item}"
methods = ["get", "POST"]
function = "a"

[[routes]]
path = "/b"
function = "b"
anonymous = true

[declassifiers.mail]
channel = "email"
function = "release"
max_label = "owner"
bound = "public"

[streams.events]
consumers = ["a", "b"]
batch_size = 20

[workflows.flow]
definition = "workflows/flow.json"
start_from = ["a"]

[limits]
concurrency = 8
queue = 32
"""

FLOW = '{"StartAt": "A", "States": {"A": {"Type": "Task", "Resource": "a", "End": true}}}'


def full_app(app: App, replace: tuple[str, str] | None = None, append: str = "") -> Path:
    toml = FULL if replace is None else FULL.replace(*replace)
    assert replace is None or toml != FULL, "the replacement must change the manifest"
    return app(toml + append, {"workflows/flow.json": FLOW})


# --------------------------------------------------------------------------- valid apps
def test_minimal_example_loads_as_written() -> None:
    m = load_manifest(REPO / "examples" / "minimal")
    assert m.name == "minimal"
    assert m.root == (REPO / "examples" / "minimal").resolve()
    lat = m.lattice
    assert (lat.bottom, lat.top) == ("public", "admin")
    assert lat.diagram() == {"public": ["user:*"], "user:*": ["admin"], "admin": []}
    assert lat.flows("public", "user:ada") and lat.flows("user:ada", "admin")
    assert not lat.flows("user:ada", "user:bob")
    assert list(m.functions) == ["hello"]
    fn = m.functions["hello"]
    assert (fn.callable, fn.timeout, fn.memory_mb) == ("handler", 5.0, 128)
    assert fn.module_file == m.root / "functions" / "hello.py"
    assert fn.module_name == "functions.hello"
    assert [(r.path, r.methods, r.function, r.anonymous) for r in m.routes] == [
        ("/hello", ("GET", "POST"), "hello", True)
    ]
    assert m.declassifiers["greeting"].function == "release_greeting"
    assert m.principals["ada"].dev_only and m.principals["ada"].label == "admin"
    assert m.policy_path == m.root / "policy.py"
    assert m.data_dir == m.root / ".trapeze"
    assert m.warnings == ()


def test_full_manifest_every_section(app: App) -> None:
    m = load_manifest(full_app(app))
    assert isinstance(m, Manifest)
    assert set(m.channels) == {"email", "images"}
    assert m.channels["email"].port == 2525 and m.channels["email"].kind == "smtp"
    # The prefix is closed with "/" so that it cannot match a longer host name.
    assert m.channels["images"].url_prefixes == ("http://127.0.0.1:8081/",)
    assert m.channels["images"].allows_url("http://127.0.0.1:8081/img/1.png")
    assert not m.channels["images"].allows_url("http://127.0.0.1:80811/")
    assert m.functions["a"].env == {"STAGE": "dev"}
    assert m.functions["a"].preload == ("json",)
    assert m.functions["b"].module_name == "functions.b"
    assert m.functions["b"].module_file.name == "b.py"
    assert m.routes[0].methods == ("GET", "POST")  # normalised to upper case
    assert m.routes[1].methods == ("POST",)  # the default
    assert m.streams["events"].consumers == ("a", "b")
    assert m.streams["events"].batch_size == 20
    assert m.workflows["flow"].document["StartAt"] == "A"
    assert m.workflows["flow"].start_from == ("a",)
    assert (m.limits.concurrency, m.limits.queue) == (8, 32)


def test_chain_form(app: App) -> None:
    root = app("""
        [app]
        name = "c"
        [labels]
        chain = ["low", "medium", "high"]
    """)
    lat = load_manifest(root).lattice
    assert (lat.bottom, lat.top) == ("low", "high")
    assert lat.flows("low", "medium") and not lat.flows("high", "medium")


def test_load_accepts_the_file_itself(app: App) -> None:
    root = full_app(app)
    assert load_manifest(root / "trapeze.toml").name == "shop"


# --------------------------------------------------------------------------- malformed
def test_toml_syntax_error_reports_tomllib_line(app: App) -> None:
    root = full_app(app, ("memory_mb = 128", "memory_mb = = 128"))
    (p,) = problems(root)
    assert p.line == line_of(root, "memory_mb = = 128")
    assert "TOML syntax error" in p.message and "write" in p.message


def test_missing_manifest(tmp_path: Path) -> None:
    (p,) = problems(tmp_path)
    assert p.line == 1 and "no trapeze.toml" in p.message


def test_unknown_section_suggests(app: App) -> None:
    root = full_app(app, append="\n[funtions.c]\nhandler = 'functions/a.py:handler'\n")
    p = find(problems(root), line_of(root, "[funtions.c]"), "unknown section 'funtions'")
    assert "write [functions] instead" in p.message


def test_unknown_key_suggests(app: App) -> None:
    root = full_app(app, ("timeout = 2.5", "timout = 2.5"))
    p = find(problems(root), line_of(root, "timout"), "unknown key 'timout'", "[functions.a]")
    assert "write timeout = 10 instead" in p.message


def test_missing_required_handler(app: App) -> None:
    root = full_app(app, ('handler = "functions.b:handler"', 'memory_mb = 64'))
    p = find(problems(root), line_of(root, "[functions.b]"), "missing the required key 'handler'")
    assert 'write handler = "functions/NAME.py:handler" instead' in p.message


def test_handler_file_missing(app: App) -> None:
    root = full_app(app, ("functions/a.py:handler", "functions/aa.py:handler"))
    p = find(problems(root), line_of(root, "functions/aa.py"), "functions/aa.py", "does not exist")
    assert 'write handler = "functions/a.py" instead' in p.message


def test_handler_bad_callable_name(app: App) -> None:
    root = full_app(app, ("functions/a.py:handler", "functions/a.py:2fast"))
    p = find(problems(root), line_of(root, "2fast"), "'2fast'", "not a valid Python function name")
    assert 'handler = "functions/a.py:handler_2fast"' in p.message


def test_handler_callable_not_defined(app: App) -> None:
    root = full_app(app, ("functions/a.py:handler", "functions/a.py:handle"))
    p = find(problems(root), line_of(root, "a.py:handle"), "defines no 'handle'")
    assert 'write handler = "functions/a.py:handler" instead' in p.message


def test_handler_outside_app_dir(app: App) -> None:
    root = full_app(app, ("functions/a.py:handler", "../a.py:handler"))
    find(problems(root), line_of(root, "../a.py"), "inside the app directory")


def test_handler_syntax_error_reported_in_its_file(app: App) -> None:
    root = app(FULL, {"workflows/flow.json": FLOW, "functions/a.py": "def handler(:\n"})
    (p,) = problems(root)
    assert p.file == root / "functions" / "a.py" and p.line == 1
    assert "syntax error" in p.message


def test_label_cycle(app: App) -> None:
    root = full_app(app, ('owner = ["top"]', 'owner = ["top"]\ntop = ["public"]'))
    p = find(problems(root), line_of(root, 'top = ["public"]'), "label cycle", "public")
    assert "top = [...] without 'public'" in p.message


def test_two_bottoms(app: App) -> None:
    root = full_app(app, ('owner = ["top"]', 'owner = ["top"]\nguest = ["owner"]'))
    p = find(problems(root), line_of(root, "guest ="), "2 bottoms", "bottom, guest")
    assert 'write bottom = [..., "guest"] instead' in p.message


def test_two_tops(app: App) -> None:
    root = full_app(app, ('public = ["client:*"]', 'public = ["client:*", "auditor"]'))
    p = find(problems(root), line_of(root, '"auditor"'), "2 tops", "auditor, top")
    assert 'write auditor = [..., "top"] instead' in p.message


def test_family_member_named_in_the_diagram(app: App) -> None:
    root = full_app(app, ('owner = ["top"]', 'owner = ["top"]\n"client:bob" = ["owner"]'))
    p = find(problems(root), line_of(root, '"client:bob" ='), "'client:bob'", "one member")
    assert 'write "client:*" instead' in p.message


def test_family_without_anything_below(app: App) -> None:
    root = full_app(app, ('owner = ["top"]', 'owner = ["top"]\n"staff:*" = ["owner"]'))
    find(problems(root), line_of(root, '"staff:*" ='), "family 'staff:*' has nothing below")


def test_bad_label_name_and_self_loop_both_reported(app: App) -> None:
    root = full_app(
        app, ('owner = ["top"]', 'owner = ["top", "owner"]\n"my label" = ["top"]')
    )
    errors = problems(root)
    find(errors, line_of(root, 'owner = ["top", "owner"]'), "'owner' is listed above itself")
    find(errors, line_of(root, '"my label"'), "invalid label name 'my label'", '"my-label"')


def test_unknown_label_in_principal(app: App) -> None:
    root = full_app(app, ('label = "owner"', 'label = "ownr"'))
    p = find(problems(root), line_of(root, '"ownr"'), "unknown label 'ownr'", "[principals.owen]")
    assert 'write label = "owner"' in p.message


def test_family_name_as_label_in_principal(app: App) -> None:
    root = full_app(app, ('label = "owner"', 'label = "client"'))
    p = find(problems(root), line_of(root, 'label = "client"'), "'client' is a family")
    assert 'label = "client:NAME"' in p.message


def test_route_to_unknown_function(app: App) -> None:
    root = full_app(app, ('function = "b"\nanonymous', 'function = "c"\nanonymous'))
    p = find(problems(root), line_of(root, 'function = "c"'), "unknown function 'c'", "#2")
    assert "write one of a, b" in p.message


def test_duplicate_route(app: App) -> None:
    extra = '\n[[routes]]\npath = "/a/{id}"\nmethods = ["GET"]\nfunction = "b"\n'
    root = full_app(app, append=extra)
    first = line_of(root, 'path = "/a/{item}"')
    p = find(problems(root), line_of(root, 'path = "/a/{id}"'), "GET /a/{id}", f"line {first}")
    assert "#1" in p.message


def test_bad_method(app: App) -> None:
    root = full_app(app, ('methods = ["get", "POST"]', 'methods = [\n  "get",\n  "POTS",\n]'))
    p = find(problems(root), line_of(root, '"POTS"'), "unknown HTTP method 'POTS'")
    assert 'write "POST" instead' in p.message


def test_bad_route_path(app: App) -> None:
    root = full_app(app, ('path = "/b"', 'path = "b?x=1"'))
    p = find(problems(root), line_of(root, '"b?x=1"'), "'b?x=1'", "start with '/'")
    assert 'path = "/b"' in p.message


def test_reserved_route_path(app: App) -> None:
    root = full_app(app, ('path = "/b"', 'path = "/_trapeze/audit"'))
    find(problems(root), line_of(root, "/_trapeze/audit"), "reserves")


def test_declassifier_unknown_channel(app: App) -> None:
    root = full_app(app, ('channel = "email"', 'channel = "emial"'))
    p = find(problems(root), line_of(root, '"emial"'), "unknown channel 'emial'")
    assert "write 'email' instead" in p.message


def test_declassifier_callable_missing_from_policy(app: App) -> None:
    root = full_app(app, ('function = "release"', 'function = "relase"'))
    p = find(problems(root), line_of(root, '"relase"'), "'relase'", "not defined in", "policy.py")
    assert 'function = "release"' in p.message


def test_declassifier_policy_not_imported_during_check(app: App) -> None:
    marker = "import pathlib\npathlib.Path(__file__).with_name('RAN').write_text('x')\n"
    policy = marker + "def release(v, i): ...\n"
    root = app(FULL, {"workflows/flow.json": FLOW, "policy.py": policy})
    load_manifest(root)
    assert not (root / "RAN").exists()


def test_declassifier_bound_cannot_reach_channel(app: App) -> None:
    root = full_app(app, ('bound = "public"\n\n[streams', 'bound = "owner"\n\n[streams'))
    find(problems(root), line_of(root, 'bound = "owner"'), "could never release", "'email'")


def test_channel_kind_unknown(app: App) -> None:
    root = full_app(app, ('kind = "smtp"', 'kind = "smpt"'))
    p = find(problems(root), line_of(root, '"smpt"'), "unknown channel kind 'smpt'")
    assert 'write kind = "smtp" instead' in p.message


def test_smtp_channel_without_host_and_http_prefix_not_http(app: App) -> None:
    root = full_app(app, ('host = "127.0.0.1"\n', ""))
    root2 = full_app(app, ('"http://127.0.0.1:8081"', '"ftp://127.0.0.1:8081/"'))
    find(problems(root), line_of(root, "[channels.email]"), "has no 'host'")
    p = find(problems(root2), line_of(root2, "ftp://"), "'ftp://127.0.0.1:8081/'", "http(s)")
    assert '"https://127.0.0.1:8081/"' in p.message


def test_smtp_key_on_http_channel(app: App) -> None:
    root = full_app(app, ("timeout = 5.0", "timeout = 5.0\nport = 80"))
    find(problems(root), line_of(root, "port = 80"), "'port' does not apply to a http channel")


def test_negative_timeout(app: App) -> None:
    root = full_app(app, ("timeout = 2.5", "timeout = -1"))
    p = find(problems(root), line_of(root, "timeout = -1"), "'timeout' = -1", "[functions.a]")
    assert "write timeout = 10 instead" in p.message


def test_wrong_type(app: App) -> None:
    root = full_app(app, ("memory_mb = 128", 'memory_mb = "128"'))
    p = find(problems(root), line_of(root, 'memory_mb = "128"'), "must be an integer", "a string")
    assert "memory_mb = 256" in p.message


def test_limits_out_of_range(app: App) -> None:
    root = full_app(app, ("concurrency = 8", "concurrency = 0"))
    p = find(problems(root), line_of(root, "concurrency = 0"), "'concurrency' = 0", "[limits]")
    assert "write concurrency = 1 instead" in p.message


def test_relative_executable(app: App) -> None:
    root = full_app(app, ('preload = ["json"]', 'preload = ["json"]\nexecutables = ["convert"]'))
    find(problems(root), line_of(root, "executables"), "'convert'", "absolute", "/usr/bin/convert")


def test_stream_consumer_unknown(app: App) -> None:
    root = full_app(app, ('consumers = ["a", "b"]', 'consumers = ["a", "bb", "zzz"]'))
    errors = problems(root)
    line = line_of(root, "consumers")
    find(errors, line, "unknown function 'bb'", "write 'b' instead")
    find(errors, line, "unknown function 'zzz'")


def test_workflow_file_missing(app: App) -> None:
    root = full_app(app, ("workflows/flow.json", "workflows/flows.json"))
    p = find(problems(root), line_of(root, "flows.json"), "flows.json", "does not exist")
    assert 'definition = "workflows/flow.json"' in p.message


def test_workflow_unparseable_and_incomplete(app: App) -> None:
    root = app(FULL, {"workflows/flow.json": '{"StartAt": "A",\n "States": }'})
    (p,) = problems(root)
    assert p.file == root / "workflows" / "flow.json" and p.line == 2
    root = app(FULL, {"workflows/flow.json": '{"States": {}}'})
    errors = problems(root)
    assert {e.message.split(",")[0] for e in errors} == {
        "the workflow definition needs StartAt",
        "the workflow definition needs States",
    }


def test_workflow_yaml(app: App) -> None:
    toml = FULL.replace("workflows/flow.json", "workflows/flow.yaml")
    root = app(toml, {"workflows/flow.yaml": "StartAt: A\nStates:\n  A: {Type: Pass, End: true}\n"})
    assert load_manifest(root).workflows["flow"].document["States"]["A"]["Type"] == "Pass"
    root = app(toml, {"workflows/flow.yaml": "StartAt: A\nStates: [\n"})
    (p,) = problems(root)
    assert p.file.name == "flow.yaml" and "YAML syntax error" in p.message


def test_principals_share_a_token(app: App) -> None:
    root = full_app(app, append='\n[principals.eve]\nlabel = "public"\ntoken = "dev-owen"\n')
    find(problems(root), line_of(root, 'token = "dev-owen"', 2), "same token as 'owen'")


def test_response_channel_is_reserved(app: App) -> None:
    root = full_app(app, append='\n[channels.response]\nkind = "http"\nbound = "public"\n'
                    'url_prefixes = ["https://x.test/"]\n')
    find(problems(root), line_of(root, "[channels.response]"), "built-in channel")


def test_declassifier_without_policy_module(app: App) -> None:
    root = full_app(app, ('policy = "policy.py"\n', ""))
    find(problems(root), line_of(root, 'function = "release"'), "declares no policy module",
         'policy = "policy.py" in [app]')


def test_missing_app_and_labels(app: App) -> None:
    root = app('[functions.a]\nhandler = "functions/a.py:handler"\n')
    errors = problems(root)
    find(errors, 1, "no [app] section")
    find(errors, 1, "no [labels] section")


# --------------------------------------------------------------------------- all at once
def test_all_problems_are_collected_in_line_order(app: App) -> None:
    broken = (
        FULL.replace('name = "shop"', 'name = "shop"\nversion = 2')
        .replace('label = "owner"', 'label = "ownr"', 1)
        .replace('kind = "smtp"', 'kind = "smpt"')
        .replace("timeout = 2.5", "timeout = 0")
        .replace('handler = "functions.b:handler"', 'handler = "functions.c:handler"')
        .replace('methods = ["get", "POST"]', 'methods = ["GIT"]')
        .replace('function = "release"', 'function = "nope"')
        .replace('consumers = ["a", "b"]', 'consumers = ["a", "x"]')
        .replace("queue = 32", "queue = -5")
    )
    root = app(broken, {"workflows/flow.json": FLOW})
    errors = problems(root)
    expected = [
        (line_of(root, "version = 2"), "unknown key 'version'"),
        (line_of(root, '"ownr"'), "unknown label 'ownr'"),
        (line_of(root, '"smpt"'), "unknown channel kind 'smpt'"),
        (line_of(root, "timeout = 0"), "'timeout' = 0"),
        (line_of(root, "functions.c:handler"), "does not exist"),
        (line_of(root, '"GIT"'), "unknown HTTP method 'GIT'"),
        (line_of(root, '"nope"'), "'nope'"),
        (line_of(root, '"x"]'), "unknown function 'x'"),
        (line_of(root, "queue = -5"), "'queue' = -5"),
    ]
    for line, words in expected:
        find(errors, line, words)
    assert len(errors) == len(expected), "\n".join(map(str, errors))
    assert [e.line for e in errors] == sorted(e.line for e in errors)
    with pytest.raises(ManifestError) as info:
        load_manifest(root)
    assert len(info.value.problems) == len(expected)
    assert str(info.value).count("trapeze.toml:") == len(expected)


def test_every_message_says_what_to_write_instead(app: App) -> None:
    root = app("""
        [app]
        nmae = 1
        [labels]
        a = ["b"]
        b = ["a"]
        [functions.f]
        handler = 3
        [[routes]]
        path = 4
        [limits]
        queue = "x"
    """)
    errors = problems(root)
    assert len(errors) >= 6
    for e in errors:
        assert " — write " in e.message and e.message.endswith(" instead"), e
