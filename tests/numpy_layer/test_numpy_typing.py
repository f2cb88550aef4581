"""The NumPy layer's public signatures are typed (issue 15, item 5): mypy checks a user's script against them.

Before, every argument and result was `Any`: mypy passed anything and revealed `Any` everywhere. A small
user script is type-checked with mypy --strict: correct uses pass, reveal_type gives NumPy float arrays
(or a float scalar for reductions, tuples for return_sign / return_grad), and the mistakes a signature
should catch (an unknown reduction, a float axis, unpacking a loss that has no gradient) are errors.

Only mypy's own imports of softxent and NumPy are followed: torch, JAX and the other optional libraries
some softxent modules import are skipped, so the check stays a few seconds (about 3 s of CPU, cold cache).
"""

import textwrap

import pytest

mypy_api = pytest.importorskip("mypy.api", reason="mypy is not installed (it is in the dev extras)")

# make test runs the suite on xdist workers (--dist loadgroup): this group keeps the module on one worker,
# so its module-scoped mypy run runs once, not once on each worker
pytestmark = pytest.mark.xdist_group("test_numpy_typing")

SCRIPT = '''
import numpy as np
import softxent as sx

x = np.random.default_rng(0).standard_normal((4, 3))
target = np.array([0, 1, 2, 0])
p = sx.softmax(x, axis=-1, temperature=2.0)
print(p[0], p.shape, [row.sum() for row in p], sx.log_softmax(x, axis=(0, 1)).max())
print(float(sx.logsumexp(x, axis=None)), sx.entropy(p) + sx.kl_divergence(p, p), sx.hardmax(x).sum())
print(sx.softmax_grad(p, x) - sx.log_softmax_grad(np.log(p), x), sx.one_hot(target, 3, dtype=np.int8))
lse, sign = sx.logsumexp(x, b=-np.ones(3), return_sign=True)
loss = sx.cross_entropy(x, target, reduction="sum", label_smoothing=0.1)
loss, grad = sx.cross_entropy(x, target, return_grad=True)
print(float(loss) + float(lse.sum() * sign.sum()), grad - p)
loss, (dx, dw, db) = sx.linear_cross_entropy(x, np.ones((5, 3)), target, return_grad=True, chunk_size=2)
print(dx @ dw.T, db is None or db.shape)
reveal_type(p)  # R softmax
reveal_type(sx.logsumexp(x))  # R logsumexp
reveal_type(sx.logsumexp(x, return_sign=True))  # R return_sign
reveal_type(sx.cross_entropy(x, target))  # R loss
reveal_type(grad)  # R grad
reveal_type(db)  # R dbias
reveal_type(sx.entropy(p))  # R entropy
reveal_type(sx.hardmax(x))  # R hardmax
sx.cross_entropy(x, target, reduction="average")  # E unknown reduction
sx.softmax(x, axis=1.5)  # E float axis
no_grad_loss, no_grad = sx.cross_entropy(x, target)  # E a loss without return_grad is no pair
sx.logsumexp(x, return_sign=True) + 1.0  # E a (lse, sign) pair is no number
'''

CONFIG = '''
[mypy]
strict = True
[mypy-torch.*,jax.*,jaxlib.*,triton.*,scipy.*,array_api_compat.*,matplotlib.*,transformers.*,rich.*,sklearn.*]
follow_imports = skip
'''

FLOAT_ARRAY = "numpy.ndarray[tuple[Any, ...], numpy.dtype[numpy.floating[Any]]]"
FLOAT_RESULT = f"{FLOAT_ARRAY} | numpy.floating[Any]"
REVEALED = {
    "softmax": FLOAT_ARRAY,
    "logsumexp": FLOAT_RESULT,
    "return_sign": f"tuple[{FLOAT_RESULT}, {FLOAT_RESULT}]",
    "loss": FLOAT_RESULT,
    "grad": FLOAT_ARRAY,
    "dbias": f"{FLOAT_ARRAY} | None",
    "entropy": FLOAT_RESULT,
    "hardmax": FLOAT_ARRAY,
}


@pytest.fixture(scope="module")
def mypy_report(tmp_path_factory):
    folder = tmp_path_factory.mktemp("typing")
    script, config = folder / "user_script.py", folder / "mypy.ini"
    script.write_text(textwrap.dedent(SCRIPT))
    config.write_text(CONFIG)
    out, err, _status = mypy_api.run(["--config-file", str(config), "--cache-dir", str(folder / "cache"),
                                      "--no-error-summary", "--hide-error-context", str(script)])
    assert not err, err
    lines = SCRIPT.splitlines()
    by_line: dict[int, list[str]] = {}
    for message in out.splitlines():  # path:line: severity: text; only the script's own lines count
        path, number, rest = message.split(":", 2)
        if path == str(script):
            by_line.setdefault(int(number), []).append(rest.strip())
    return lines, by_line


def _marked(lines, mark):
    return [(i + 1, line.split(f"# {mark} ")[1]) for i, line in enumerate(lines) if f"# {mark} " in line]


def test_correct_uses_type_check(mypy_report):
    lines, by_line = mypy_report
    marked = {number for number, _ in _marked(lines, "E")}
    wrong = {n: m for n, m in by_line.items() if n not in marked and any(x.startswith("error") for x in m)}
    assert not wrong, "\n".join(f"{lines[n - 1].strip()}\n    {m}" for n, m in wrong.items())


@pytest.mark.parametrize("what", sorted(REVEALED))
def test_reveal_type_gives_numpy_float_types(mypy_report, what):
    lines, by_line = mypy_report
    (number,) = [n for n, name in _marked(lines, "R") if name == what]
    assert by_line.get(number) == [f'note: Revealed type is "{REVEALED[what]}"'], by_line.get(number)


@pytest.mark.parametrize("mistake", ["unknown reduction", "float axis", "a loss without return_grad is no pair",
                                     "a (lse, sign) pair is no number"])
def test_signature_mistakes_are_type_errors(mypy_report, mistake):
    lines, by_line = mypy_report
    (number,) = [n for n, name in _marked(lines, "E") if name == mistake]
    assert any(m.startswith("error") for m in by_line.get(number, [])), f"mypy let this pass: {lines[number - 1]}"
