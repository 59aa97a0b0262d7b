"""The checkout imports by package names only: the root is importable (pytest's ``pythonpath``, ``python -m`` from
the root), so no module edits ``sys.path``."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EDIT = re.compile(r"sys\.path\.(insert|append|extend)\(|sys\.path\[[^\]]*\]\s*=(?!=)|syspath_prepend\(")


def test_no_module_edits_sys_path():
    found = {}
    for folder in ("vmae2", "vmae2_kernels", "benchmarks", "tests", "oracle", "examples"):
        for path in (ROOT / folder).rglob("*.py"):
            count = len(EDIT.findall(path.read_text(encoding="utf-8")))
            if count:
                found[path.relative_to(ROOT).as_posix()] = count
    found.pop("tests/test_layout.py", None)
    assert found == {"tests/test_optional.py": 1}, found  # test_optional: a broken module in tmp_path


def test_the_oracle_is_a_package_of_the_checkout_not_of_the_tests():
    import oracle
    from oracle import tolerances

    assert Path(oracle.__file__).parent == ROOT / "oracle" and tolerances.FP_TOL
    assert not (ROOT / "tests" / "official_oracle").exists() and not (ROOT / "tests" / "tolerances.py").exists()
