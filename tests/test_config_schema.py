"""The config schema (ganbench/schema.py): every knob of conf/ is typed and bounded, and every bad value of every knob
(zero, negative, huge, wrong type, NaN/inf, an empty list) is refused with one sentence naming the key, the value and
what is allowed, before torch loads. The cases are generated from conf/ and the schema, so a new option or knob is
covered as it is added."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from ganbench import config, schema
from ganbench.errors import GanbenchError

CONF = Path(__file__).resolve().parents[1] / "conf"


def option_knobs() -> list[tuple[str, str, str, object]]:
    """(group, option, knob path inside the group node, value) for every plain value of every option YAML."""
    out = []

    def walk(node, group, option, prefix):
        for key, value in node.items():
            if key.startswith("_") or key == "defaults":
                continue
            if isinstance(value, dict):
                walk(value, group, option, f"{prefix}{key}.")
            elif not (isinstance(value, str) and value.startswith("${")):
                out.append((group, option, prefix + key, value))

    for group in schema.GROUP_KNOBS:
        for path in sorted((CONF / group).glob("*.yaml")):
            walk(OmegaConf.to_container(OmegaConf.load(path)), group, path.stem, "")
    return out


def field_of(group: str | None, option_target: str, path: str):
    """(schema class, field) declaring ``path`` of a group option (or of the top level), or None."""
    cls = schema.Train if group is None else schema.knobs_of(group, {"_target_": option_target})
    *parents, key = path.split(".")
    for part in parents:
        fields = {f.name: f for f in dataclasses.fields(cls)}
        if part not in fields:
            return None
        cls = schema._base(typing.get_type_hints(cls)[part])
    fields = {f.name: f for f in dataclasses.fields(cls)}
    return (cls, fields[key]) if key in fields else None


def target_of(group: str, option: str) -> str:
    return OmegaConf.load(CONF / group / f"{option}.yaml").get("_target_", "")


def bad_values(cls, f: dataclasses.Field) -> list[str]:
    """Override values (Hydra syntax) the knob must refuse: wrong types, NaN/inf, and just past each bound."""
    hint = typing.get_type_hints(cls)[f.name]
    base, b = schema._base(hint), f.metadata.get("bounds", schema.Bounds())
    if base is bool:
        return ["3", "maybe"]
    if b.choices is not None:
        return ["nope"] if isinstance(b.choices[0], str) else [str(max(b.choices) + 1), "1.5"]
    if base is list:
        return ["abc"] + (["[]", "[2.0,0.9]", "[0.5]", "[nan,0.9]"] if b.length else [])
    if base is str:
        return [v for v in ("", "cuda:x") if b.pattern and not re.fullmatch(b.pattern, v)]  # others: any name
    values = ["abc", "nan", "inf"] if base is float else ["abc", "1.5", "[]"]
    for low in (b.ge, b.gt):
        if low is not None:
            values.append(str(low - 1) if base is int else str(low - 1e-3) if b.ge is not None else str(low))
    for high in (b.le, b.lt):
        if high is not None:
            values.append(str(high + 1) if base is int else str(high + 1e-3) if b.le is not None else str(high))
    if not _optional(hint):
        values.append("null")
    return values


def _optional(hint) -> bool:
    return type(None) in typing.get_args(hint)


def cases() -> list[list[str]]:
    """One bad command line per (knob, bad value): every top-level knob, and every knob of every group option."""
    out = []
    for f in dataclasses.fields(schema.Train):
        nested = schema._base(typing.get_type_hints(schema.Train)[f.name])
        if f.name in schema.GROUP_KNOBS or f.name == "study":
            continue
        if dataclasses.is_dataclass(nested):
            for g in dataclasses.fields(nested):
                out += [[f"{f.name}.{g.name}={v}"] for v in bad_values(nested, g)]
            out.append([f"{f.name}=3"])
        else:
            out += [[f"{f.name}={v}"] for v in bad_values(schema.Train, f)]
    seen = set()  # one option per declared knob: the schema class, not the option, decides what is checked
    for group, option, path, _ in option_knobs():
        found = field_of(group, target_of(group, option), path)
        if found is None or (found[0], path) in seen:
            continue
        seen.add((found[0], path))
        select = [] if group == "metrics" else [f"{group}={option}"]
        if group == "dataset" and option == "folder":
            select.append("dataset.root=.")
        out += [[*select, f"{group}.{path}={v}"] for v in bad_values(*found)]
    return [list(c) for c in dict.fromkeys(tuple(c) for c in out)]


def test_every_numeric_knob_of_every_option_has_declared_bounds():
    """A number a user can set in conf/<group>/*.yaml has a range in the schema (a new knob: one line there)."""
    undeclared = []
    for group, option, path, value in option_knobs():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        found = field_of(group, target_of(group, option), path)
        b = found[1].metadata.get("bounds") if found else None
        if b is None or (b.ge, b.gt, b.le, b.lt, b.choices) == (None,) * 5:
            undeclared.append(f"{group}={option}: {path}")
    assert not undeclared, undeclared


def test_generated_cases_cover_the_issue_list():
    lines = {" ".join(c) for c in cases()}
    for needed in ("model=mlp model.generator.hidden=0", "model=mlp model.generator.depth=0",
                   "model=dcgan model.z_dim=0", "optim=adam optim.betas=[2.0,0.9]", "optim=adam optim.betas=[]",
                   "dataset=folder dataset.root=. dataset.channels=4", "dataset=folder dataset.root=. "
                   "dataset.resolution=0", "dataset=folder dataset.root=. dataset.max_images=0",
                   "loss=ganqp loss.lam=0"):
        assert needed in lines, needed
    assert len(lines) > 200


def test_every_bad_value_is_one_sentence_before_torch_loads(tmp_path):
    """All the generated cases in one fresh process through `ganbench train`'s own check: each refused with one line
    naming the key and the value, and torch never imported."""
    all_cases = cases() + [["-m", "steps=1,0"], ["-m", "loss=ganqp", "loss.lam=1,-1"], ["-m", "fast=true,3"]]
    code = (
        "import json, sys\n"
        "from ganbench import config\n"
        "from ganbench.errors import GanbenchError\n"
        "out = []\n"
        "for case in json.loads(sys.argv[1]):\n"
        "    try:\n"
        "        config.prepare_argv(case)\n"
        "        out.append(None)\n"
        "    except GanbenchError as e:\n"
        "        out.append(str(e))\n"
        "print(json.dumps({'messages': out, 'torch': 'torch' in sys.modules}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(all_cases)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["torch"] is False
    problems = []
    for case, message in zip(all_cases, result["messages"]):
        key, _, value = case[-1].partition("=")
        if message is None:
            problems.append(f"accepted: {case}")
        elif "\n" in message or key.split(".")[-1] not in message:
            problems.append(f"{case}: {message}")
    assert not problems, problems
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("overrides,message", [
    (["optim.betas=[2,0.9]"], "optim.betas must be two numbers in [0, 1), e.g. [0.0, 0.9], got [2.0, 0.9]."),
    (["steps=abc"], "steps must be a positive integer, got 'abc'."),
    (["ema_decay=nan"], "ema_decay must be a number in [0, 1) (0 turns EMA off), got nan."),
    (["+instance_noise.sigma=1"], "unknown config key 'instance_noise.sigma'; instance_noise takes exactly two keys, "
                                  "std and until."),
    (["batch_size=1000000000"], "batch_size must be a positive integer ≤ 1,048,576, got 1000000000."),
    (["batch_size=20000"], "batch_size=20000 is larger than the dataset (10000 images); lower batch_size."),
    (["dataset.split=test", "batch_size=2000"],
     "batch_size=2000 is larger than the dataset (1000 images); lower batch_size."),
    (["model=mlp", "model.generator.hidden=0"], "model.generator.hidden must be a positive integer ≤ 16,384, got 0."),
    (["loss=sgan", "loss.saturating=1"], "loss.saturating must be true or false, got 1."),
    (["optim.g.lr=5"], "optim.g.lr must be a positive number ≤ 1, got 5.0."),
    (["+loss.margin=2"], "unknown config key 'loss.margin'; see `ganbench train --cfg job` for the keys there are."),
])
def test_messages_name_key_value_and_what_is_allowed(overrides, message):
    with pytest.raises(GanbenchError) as e:
        config.prepare_argv(overrides)
    assert str(e.value) == message


def test_sizes_that_cannot_fit_in_memory_are_refused(monkeypatch):
    monkeypatch.setattr(config, "machine_memory", lambda: 8 * 2**30)
    config.validate(config.compose(["experiment=grid25_ganqp"]))  # batch 1024, width 256: fits
    config.validate(config.compose(["model=mlp", "dataset=grid25", "batch_size=65536"]))  # about 0.8 GiB
    for overrides in (["model=mlp", "dataset=grid25", "model.generator.hidden=16384", "model.generator.depth=64"],
                      ["model=mlp", "dataset=grid25", "batch_size=1048576"],  # width-256 activations: 12 GiB
                      ["dataset=folder", "dataset.root=.", "dataset.resolution=512", "batch_size=4096"]):
        with pytest.raises(GanbenchError, match=r"needs at least [\d,]+ GiB of memory and this machine has 8 GiB"):
            config.validate(config.compose(overrides))


def test_a_dataset_root_that_is_a_file_or_missing(tmp_path):
    (tmp_path / "a_file").write_text("x")
    for root, needle in ((tmp_path / "a_file", "is a file, not a folder"), (tmp_path / "nope", "does not exist")):
        with pytest.raises(GanbenchError, match=needle):
            config.check_paths(config.compose(["dataset=folder", f"dataset.root={root}"]))


@pytest.mark.parametrize("value,needle", [("", "GANBENCH_CACHE is set but empty"), ("FILE", "is a file")])
def test_a_cache_that_is_empty_or_a_file(tmp_path, monkeypatch, value, needle):
    (tmp_path / "f").write_text("x")
    monkeypatch.setenv("GANBENCH_CACHE", str(tmp_path / "f") if value == "FILE" else value)
    with pytest.raises(GanbenchError, match=needle):
        config.cache_root()


def test_good_configs_pass():
    """The shipped defaults and every option of every group validate as they are."""
    config.validate(config.compose([]))
    for group, option, _, _ in {(g, o, None, None) for g, o, _, _ in option_knobs()}:
        if group == "metrics":
            config.validate(config.compose([f"metrics={option}"]))
        else:
            extra = ["dataset.root=."] if (group, option) == ("dataset", "folder") else []
            config.validate(config.compose([f"{group}={option}", *extra]))
