"""check / plan as structured results, errors as exceptions, import without torch or GPU."""

import json
import subprocess
import sys

import pytest

import wmap


def test_check_returns_diagnostics_not_text(hf):
    ok = wmap.check(checkpoint=hf / "llama")
    assert ok.ok and ok.model == "Llama" and ok.diagnostics == []
    bad = wmap.check(config=hf / "llama" / "config.json", model="Qwen3Moe")
    assert not bad.ok
    assert all(isinstance(d, wmap.Diagnostic) for d in bad.diagnostics)
    assert bad.diagnostics[0].severity == "error"
    assert bad.diagnostics[0].code.startswith("E")


def test_plan_is_a_dict_like_wmapc_plan_json(hf, wmapc):
    p = wmap.plan(hf / "llama")
    cli = json.loads(
        subprocess.run(
            [str(wmapc), "plan", "--checkpoint", str(hf / "llama"), "--format", "json"],
            check=True,
            capture_output=True,
        ).stdout
    )
    assert p == cli


def test_errors_carry_code_rendered_and_structured(tmp_path):
    with pytest.raises(wmap.WmapError) as e:
        wmap.load(tmp_path / "missing")
    err = e.value
    assert err.code == "E0806"
    assert "error[E0806/file-unreadable]" in err.rendered
    assert err.diagnostic["code"] == "E0806" and err.diagnostic["severity"] == "error"


def test_input_errors_come_from_the_compiler(hf):
    with pytest.raises(wmap.WmapError) as e:
        wmap.load(hf / "llama", model="Qwen3Moe")
    assert e.value.code.startswith("E0") and e.value.diagnostic["labels"]


def test_bad_arguments_are_invalid_flag_values(hf):
    for kwargs in ({"quant": "int3"}, {"device": "tpu"}, {"offload_policy": "mru"}):
        with pytest.raises(wmap.WmapError) as e:
            wmap.load(hf / "llama", **kwargs)
        assert e.value.code == "E0802", kwargs


def test_option_conflicts_are_flag_combinations(hf):
    with pytest.raises(wmap.WmapError) as e:
        wmap.load(hf / "llama", offload_budget=1000)
    assert e.value.code == "E0803"


def test_cuda_without_a_cuda_build_or_driver_is_coded(hf):
    if wmap.cuda_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(wmap.WmapError) as e:
        wmap.load(hf / "llama", device="cuda:0")
    assert e.value.code == "E0711"


def test_imports_without_torch_and_gpu():
    # A fresh interpreter where `import torch` fails and no CUDA device is visible.
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['bitsandbytes'] = None\n"
        "import wmap, wmap.torch\n"
        "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
        "print(wmap.cuda_available())\n"
    )
    env = {"CUDA_VISIBLE_DEVICES": "", "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


def test_device_auto_says_where_it_loaded(hf):
    if wmap.cuda_available():
        pytest.skip("a CUDA device is present")
    with pytest.warns(UserWarning, match="no CUDA device is available; loading on the CPU"):
        store = wmap.load(hf / "llama", device="auto")
    assert isinstance(store, wmap.Store)
