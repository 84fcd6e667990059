import json
import subprocess
import sys
import textwrap

from rbr.cli import main
from tests.shared import GOLD_TEST, GOLD_TRAIN, REFERENCE_SPEC, require_shared_data


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "rbr.cli", *args], capture_output=True, text=True, timeout=120)


def test_spec_check_reference_counts():
    require_shared_data(REFERENCE_SPEC)
    result = run_cli("spec", "check", str(REFERENCE_SPEC))
    assert result.returncode == 0, result.stderr
    assert "simple propositions:  23" in result.stdout
    assert "completion classes:   5" in result.stdout
    assert "response types:       4" in result.stdout


def test_spec_check_cycle_exits_1_without_traceback(tmp_path):
    path = tmp_path / "cycle.yaml"
    path.write_text(textwrap.dedent("""\
        template: "{question} {response}"
        propositions:
          apology: {question: "Does it apologize?"}
        derived:
          a: [b]
          b: [a, apology]
        classes:
          ideal: {Comply: [a]}
        """))
    result = run_cli("spec", "check", str(path))
    assert result.returncode == 1
    assert "cycle" in result.stderr
    assert "a -> b -> a" in result.stderr
    assert "Traceback" not in result.stderr


def test_import_rbr_loads_no_heavy_packages():
    code = "import sys, rbr.spec, rbr.features, rbr.fit, rbr.reward, rbr.bundle, rbr.render, rbr.cli; " \
           "heavy = [m for m in ('torch', 'transformers', 'onnxruntime') if m in sys.modules]; print(heavy)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_gold_classes_fit_and_rank_eval(tmp_path, capsys):
    require_shared_data(GOLD_TRAIN)
    train, test = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    assert main(["classes", "--data", str(GOLD_TRAIN), "--out", str(train)]) == 0
    assert main(["classes", "--data", str(GOLD_TEST), "--out", str(test)]) == 0
    first = json.loads(train.read_text().splitlines()[0])
    assert first["label"] in ("ideal", "minimum_acceptable_style", "unacceptable_completion",
                              "illogical_completion", "disallowed_completion")

    weights = tmp_path / "w.json"
    assert main(["fit", "--data", str(train), "--pairing", "cross-prompt", "--out", str(weights)]) == 0
    capsys.readouterr()
    assert main(["rank-eval", "--data", str(test), "--weights", str(weights), "--pairing", "cross-prompt"]) == 0
    table = capsys.readouterr().out
    overall = float(table.strip().splitlines()[-1].split("|")[-2])
    assert overall > 0.9


def test_fit_in_prompt_mode_on_gold_explains_missing_pairs(tmp_path, capsys):
    require_shared_data(GOLD_TRAIN)
    train = tmp_path / "train.jsonl"
    main(["classes", "--data", str(GOLD_TRAIN), "--out", str(train)])
    code = main(["fit", "--data", str(train), "--out", str(tmp_path / "w.json")])
    assert code == 1
    assert "use --pairing cross-prompt" in capsys.readouterr().err


def test_weights_refused_for_another_spec(tmp_path, capsys):
    require_shared_data(GOLD_TRAIN)
    train = tmp_path / "train.jsonl"
    main(["classes", "--data", str(GOLD_TRAIN), "--out", str(train)])
    weights = tmp_path / "w.json"
    main(["fit", "--data", str(train), "--pairing", "cross-prompt", "--out", str(weights)])
    capsys.readouterr()
    code = main(["rank-eval", "--data", str(train), "--weights", str(weights), "--spec", str(REFERENCE_SPEC),
                 "--pairing", "cross-prompt"])
    assert code == 1
    assert "were fitted for spec" in capsys.readouterr().err
