"""`samex rules check`: clean exit on the example, `file:line: message` on every kind of problem."""

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from router.cli import cli

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def rules(tmp_path) -> Path:
    d = tmp_path / "rules"
    shutil.copytree(REPO / "rules", d)
    return d


def run(d: Path):
    return CliRunner().invoke(cli, ["rules", "check", str(d)])


def test_example_is_clean():
    r = CliRunner().invoke(cli, ["rules", "check", str(REPO / "rules")])
    assert r.exit_code == 0, r.output


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


def line_of(path: Path, needle: str) -> int:
    lines = path.read_text().splitlines()
    exact = [i for i, line in enumerate(lines, 1) if line.strip() == needle.strip()]
    return exact[0] if exact else next(i for i, line in enumerate(lines, 1) if needle in line)


@pytest.mark.parametrize("old,new,needle,message", [
    ("    priority: 100\n    live: [millennium]\n    not_live: [elvis]",
     "    priority: 100\n    live: [millennium]\n    not_live: [elvis]\n    colour: red", "colour", "unknown key"),
    ("  - id: remiss-primarvard\n    kind: remiss", "  - id: remiss-primarvard\n    kind: remis", "kind: remis",
     "kind"),
    ("    priority: 0", "    priority: high", "priority: high", "priority"),
    ("not_live: [asynja]", "not_live: [asynya]", "asynya", "unknown system 'asynya'"),
    ("- id: remiss-privat", "- id: remiss-sjukhus", "- id: remiss-sjukhus\n", "duplicate route id"),
])
def test_route_file_problems_name_file_and_line(rules, old, new, needle, message):
    path = rules / "routes" / "base.yaml"
    edit(path, old, new)
    r = run(rules)
    assert r.exit_code == 1
    assert message in r.output, r.output
    lines = [ln for ln in r.output.splitlines() if message in ln]
    assert any(ln.startswith(f"{path}:") for ln in lines), r.output
    if needle != "- id: remiss-sjukhus\n":
        expected = line_of(path, needle.split("\n")[0])
        assert any(f"{path}:{expected}:" in ln or f"{path}:{expected - 1}:" in ln for ln in lines), (expected, r.output)


def test_duplicate_route_id_names_both_places(rules):
    path = rules / "routes" / "base.yaml"
    first = line_of(path, "- id: remiss-sjukhus")
    edit(path, "- id: remiss-privat", "- id: remiss-sjukhus")
    second = [i for i, ln in enumerate(path.read_text().splitlines(), 1) if ln.strip() == "- id: remiss-sjukhus"][1]
    r = run(rules)
    assert r.exit_code == 1
    assert f"{path}:{second}: duplicate route id 'remiss-sjukhus' (also at {path}:{first})" in r.output, r.output


def test_control_characters_are_a_line_not_a_traceback(rules):
    route = rules / "routes" / "etapp-4-vastra.yaml"
    lines = route.read_text().count("\n")
    with route.open("a") as fh:
        fh.write("# pasted \x1b[0m\n")
    csv = rules / "units.csv"
    csv.write_text(csv.read_text().replace("\n", "\n\0", 1))
    r = run(rules)
    assert r.exit_code == 1 and (r.exception is None or isinstance(r.exception, SystemExit)), r.output
    assert f"{route}:{lines + 1}: YAML error: U+001B is not allowed" in r.output, r.output
    assert f"{csv}:2: a NUL character is not allowed" in r.output, r.output


def test_unreadable_csv_and_pathological_yaml_are_problems_not_tracebacks(rules):
    csv = rules / "units.csv"
    lines = csv.read_text().splitlines()
    lines[2] = '"' + lines[2]  # a quote never closed, and enough rows after it to overflow a field
    csv.write_text("\n".join(lines + ["x" * 200] * 1000) + "\n")
    (rules / "routes" / "etapp-4-vastra.yaml").write_text("a: " + "[" * 5000 + "]" * 5000 + "\n")
    r = run(rules)
    assert r.exit_code == 1 and (r.exception is None or isinstance(r.exception, SystemExit)), r.output
    assert f"{csv}:3: not readable as CSV from this line on" in r.output, r.output
    assert "etapp-4-vastra.yaml:1: YAML error: nested too deeply" in r.output, r.output


def test_yaml_syntax_error_has_line(rules):
    path = rules / "plan.yaml"
    text = path.read_text().splitlines()
    text[10] = text[10] + " ]["
    path.write_text("\n".join(text) + "\n")
    r = run(rules)
    assert r.exit_code == 1 and f"{path}:" in r.output and "YAML error" in r.output


def test_duplicate_yaml_key(rules):
    path = rules / "systems.yaml"
    edit(path, "target: millennium", "target: millennium\ntarget: melior")
    r = run(rules)
    assert r.exit_code == 1 and f"{path}:{line_of(path, 'target: melior')}: duplicate key 'target'" in r.output


def test_go_live_without_time_zone(rules):
    path = rules / "plan.yaml"
    edit(path, "2025-10-14T06:00 Europe/Stockholm", "2025-10-14T06:00")
    r = run(rules)
    assert r.exit_code == 1 and "no time zone" in r.output and f"{path}:" in r.output


def test_unit_claimed_by_two_etapper(rules):
    path = rules / "plan.yaml"
    edit(path, "      municipality: [Alingsås, Lerum]", "      municipality: [Alingsås, Lerum, Borås]")
    r = run(rules)
    assert r.exit_code == 1 and "claimed by both etapp-1-sodra-pd1 and etapp-2-sodra" in r.output


def test_unknown_unit_reference(rules):
    edit(rules / "plan.yaml", "      area: [vastra]", "      area: [vastra]\n      include: [SE2321000131-E999]")
    r = run(rules)
    assert r.exit_code == 1 and "SE2321000131-E999 is not in the unit directory" in r.output


def test_overlapping_routes_at_equal_priority(rules):
    path = rules / "routes" / "etapp-2-sodra.yaml"
    path.write_text("etapp: etapp-2-sodra\nroutes:\n"
                    "  - id: a\n    kind: remiss\n    receiver: {unit_type: [sjukhus]}\n    priority: 300\n"
                    "    to: [millennium]\n"
                    "  - id: b\n    kind: remiss\n    receiver: {area: [sodra]}\n    priority: 300\n    to: [elvis]\n")
    r = run(rules)
    # at the later route's line (the one an integration team would just have added), naming the other's
    assert r.exit_code == 1 and f"{path}:8: routes a ({path}:3) and b both apply at equal priority" in r.output, \
        r.output


def test_an_etapp_route_clashing_with_a_base_route_is_reported_in_the_etapp_file(rules):
    path = rules / "routes" / "etapp-3-norra-ostra.yaml"
    edit(path, "routes: []", "routes:\n  - id: e3-remiss-sjukhus-extra\n    kind: remiss\n"
         "    receiver: {unit_type: [sjukhus]}\n    priority: 100\n    live: [millennium]\n    not_live: [elvis]")
    r = run(rules)
    assert r.exit_code == 1, r.output
    clash = [ln for ln in r.output.splitlines() if "equal priority" in ln]
    where = f"{path}:12: routes remiss-sjukhus ({rules}/routes/base.yaml:"
    assert clash and all(ln.startswith(where) for ln in clash), r.output


def test_a_gap_is_reported(rules):
    path = rules / "routes" / "base.yaml"
    text = path.read_text()
    path.write_text(text[: text.index("  - id: no-route")])
    r = run(rules)
    assert r.exit_code == 1 and "no applicable route for remiss to lab units" in r.output


def test_route_to_a_retired_system(rules):
    edit(rules / "systems.yaml", "  - id: elvis\n    description: Patient administration and referral handling"
         " (replaced per etapp)",
         "  - id: elvis\n    description: x\n    retired_from: 2025-01-01T00:00 Europe/Stockholm")
    r = run(rules)
    assert r.exit_code == 1 and "route remiss-sjukhus sends to elvis after its retirement" in r.output


def test_an_unclosed_quote_is_reported_where_it_opens(rules):
    path = rules / "units.csv"
    lines = path.read_text().splitlines()
    lines[42] = '"' + lines[42]  # line 43
    path.write_text("\n".join(lines) + "\n")
    r = run(rules)
    assert r.exit_code == 1
    assert f"{path}:43: expected 7 columns, found 1; a quoted field opened on this line runs on to line " \
           f"{len(lines)}: is a quote not closed?" in r.output, r.output


def test_an_unclosed_quote_on_the_last_row_is_named_too(rules):
    path = rules / "units.csv"
    lines = path.read_text().splitlines()
    lines[-1] = lines[-1].replace(",", ',"', 1)  # one quote, opened and never closed
    path.write_text("\n".join(lines) + "\n")
    r = run(rules)
    assert r.exit_code == 1
    assert f"{path}:{len(lines)}: expected 7 columns, found " in r.output and "is a quote not closed?" in r.output, \
        r.output


def test_csv_problems(rules):
    path = rules / "units.csv"
    lines = path.read_text().splitlines()
    lines[3] = lines[3].replace("SE2321000131-E", "SE2321000131_E", 1)
    lines.append(lines[5])
    path.write_text("\n".join(lines) + "\n")
    r = run(rules)
    assert r.exit_code == 1
    assert f"{path}:4: hsa_id: HSA-id must be" in r.output
    assert f"{path}:{len(lines)}: duplicate unit" in r.output


def test_not_a_folder(tmp_path):
    r = run(tmp_path / "nope")
    assert r.exit_code != 0
