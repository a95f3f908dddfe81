"""Device paths: every public piece on the model's device. `PYTHONPATH=. python scripts/check_device.py cuda`
(not run by CI; any device torch knows, `cpu` included). Prints OK or FAIL with the traceback per check."""
import functools, sys, tempfile, time, traceback
import torch
from torch import nn
import math
from explanations import BooleanCube, Gaussian, Step, compile_model, explain
from explanations.events import Above, All, Any, ArgMax, Below, Detector
from storage import open_run
from tracker import Tracker
from train.catastrophe import CatastrophePenalty

dev = torch.device(sys.argv[1])
failures = []

def check(name, fn):
    t = time.time()
    try:
        out = fn()
        print(f"OK   {name} ({time.time() - t:.1f}s): {out}", flush=True)
    except Exception:
        failures.append(name)
        print(f"FAIL {name}:\n{traceback.format_exc()}", flush=True)

def on_device(*tensors):
    return all(t.device.type == dev.type for t in tensors)

torch.manual_seed(0)
mlp = nn.Sequential(nn.Linear(8, 64), nn.LeakyReLU(0.1), nn.Linear(64, 64), nn.SiLU(), nn.Linear(64, 3)).to(dev)
D = Gaussian.standard(8, device=dev)
x = torch.randn(1_000_000, 8, device=dev)
with torch.no_grad():
    y = mlp(x).double()
sd = y.std(0)

def mlp_methods():
    rows = []
    for method in ("gaussian", "cumulant", "auto"):
        pi = explain(mlp, D, method)
        e = pi.expectation()
        assert on_device(pi.mean, e.value), "π not on the model's device"
        rows.append(f"{method} max err/sd {float(((e.value - y.mean(0)) / sd).abs().max()):.4f}")
    return "; ".join(rows)
check("MLP expectations on device", mlp_methods)

def mlp_probabilities():
    pi = explain(mlp, D, "cumulant")
    t = float(y[:, 0].quantile(1 - 1e-4))
    truth = float((y[:, 0] > t).double().mean())
    zero = pi.probability(Above(0, t))
    sampled = pi.probability(Above(0, t), samples=5000)
    both = pi.probability(All(Above(0, float(y[:, 0].quantile(0.99))), Below(1, float(y[:, 1].quantile(0.05)))), samples=3000)
    argmax = pi.probability(ArgMax(2), samples=3000)
    det = pi.probability(Detector(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1)).to(dev), 0.5), samples=3000)
    p = pi.predict(torch.randn(4, 8, device=dev))
    assert on_device(p)
    return (f"truth {truth:.2e} zero {zero.value:.2e} sampled {sampled.value:.2e} {sampled.interval}; "
            f"All {both.value:.2e}; ArgMax {argmax.value:.3f}; detector {det.value:.3f}")
check("MLP probabilities and predict on device", mlp_probabilities)

def mlp_control():
    e = explain(mlp, D, "cumulant").expectation(samples=20_000)
    return f"{e.value.tolist()} ± {((e.interval[1] - e.interval[0]) / 2).tolist()}"
check("control-variate mean on device", mlp_control)

def float32():
    pi = explain(mlp, D, "cumulant", dtype=torch.float32)
    return f"{pi.expectation().value.dtype} {pi.probability(Above(0, 1.0)).value:.3e}"
check("float32 π on device", float32)

cnn = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 4, 3), nn.ReLU(),
                    nn.AvgPool2d(2), nn.Flatten(), nn.Linear(4 * 2 * 2, 2)).to(dev)
def cnn_compile():
    cnn.eval()
    g = compile_model(cnn, input_shape=(1, 14, 14))
    images = torch.randn(256, 1, 14, 14, device=dev)
    err = float((g.forward(images.flatten(1)) - cnn(images)).abs().max())
    pi = explain(cnn, Gaussian.standard(196, device=dev), "gaussian", input_shape=(1, 14, 14))
    with torch.no_grad():
        out = cnn(torch.randn(400_000, 1, 14, 14, device=dev)).double()
    return f"graph err {err:.1e}; mean err/sd {float(((pi.expectation().value - out.mean(0)) / out.std(0)).abs().max()):.3f}"
check("CNN compile and moments on device", cnn_compile)

def tracker_cnn():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.1), nn.Flatten(),
                          nn.Linear(4 * 6 * 6, 1)).to(dev)
    optimizer = torch.optim.Adam(model.parameters(), 1e-2)
    path = tempfile.mkdtemp() + "/run.h5"
    with Tracker(model, optimizer, Gaussian.standard(64, device=dev), method="cumulant",
                 events={"high": Above(0, 3.0)}, path=path, every=10, input_shape=(1, 8, 8)) as tracker:
        for _ in range(40):
            images = torch.randn(256, 1, 8, 8, device=dev)
            loss = ((model(images)[:, 0] - images[:, 0, 3, 3]) ** 2).mean()
            optimizer.zero_grad(); loss.backward(); optimizer.step()
    run = open_run(path)
    last = run.last.explanation.expectation().value
    return f"ledger ratio {tracker.ledger.ratio:.3f}, checkpoints {run.steps}, saved E[y] {last.tolist()} on {last.device}"
check("Tracker on a CNN on device, file read back", tracker_cnn)

def tracker_sampled_events():
    model = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 2)).to(dev)
    optimizer = torch.optim.Adam(model.parameters(), 3e-3)
    path = tempfile.mkdtemp() + "/run.h5"
    with Tracker(model, optimizer, Gaussian.standard(6, device=dev), method="auto", every=20, event_samples=2000,
                 events={"high": Above(0, 1.6)}, path=path) as tracker:
        for _ in range(60):
            inputs = torch.randn(256, 6, device=dev)
            loss = ((model(inputs) - inputs[:, :2].sin()) ** 2).mean()
            optimizer.zero_grad(); loss.backward(); optimizer.step()
    series = open_run(path).series("high")
    return (f"ledger ratio {tracker.ledger.ratio:.3f}, overruns {tracker.ledger.overruns}, "
            f"last estimate {series.value[-1]:.2e} in [{series.lo[-1]:.2e}, {series.hi[-1]:.2e}]")
check("Tracker with sampled events on device", tracker_sampled_events)

def gelu_max_pool():
    net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.GELU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(3 * 3 * 3, 1)).to(dev)
    g = compile_model(net, input_shape=(1, 8, 8))
    images = torch.randn(256, 1, 8, 8, device=dev)
    return f"graph err {float((g.forward(images.flatten(1)) - net(images)).abs().max()):.1e}"
check("GELU before a max pool (extremes rewrite) on device", gelu_max_pool)

def singular_sampling():
    v = torch.randn(5, device=dev, dtype=torch.float64)
    x = Gaussian(torch.zeros(5, device=dev, dtype=torch.float64), torch.outer(v, v)).sample(10_000)
    off = x - torch.outer(x @ v / (v @ v), v)
    assert float(off.abs().max()) <= 1e-12 * float(x.abs().max()), float(off.abs().max())
    return f"max off-range {float(off.abs().max()):.1e} of {float(x.abs().max()):.1f}"
check("rank-one covariance sampled on its range on device", singular_sampling)

def penalty():
    model = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 2)).to(dev)
    optimizer = torch.optim.Adam(model.parameters(), 3e-3)
    guard = CatastrophePenalty(model, Gaussian.standard(4, device=dev), All(Above(0, 2.0), Above(1, 2.0)), target=1e-6, weight=0.1)
    for _ in range(20):
        inputs = torch.randn(256, 4, device=dev)
        loss = ((model(inputs) - inputs[:, :2]) ** 2).mean() + guard()
        optimizer.zero_grad(); loss.backward(); optimizer.step()
    hard = guard.inputs(8)
    assert on_device(hard)
    return f"log10 P {guard.log10_probability:.2f}, flops {guard.flops:.3g}, inputs on {hard.device}"
check("CatastrophePenalty on device", penalty)

def fit():
    data = torch.randn(5000, 6, device=dev) @ torch.randn(6, 6, device=dev)
    fitted = Gaussian.fit(data, shrinkage="ledoit-wolf")
    return f"{fitted} on {fitted.mean.device}"
check("Gaussian.fit on device", fit)

@functools.cache
def rough_tanh():
    """A 4 → 64³ → 1 tanh net with large weights, D = N(0, I), a threshold at p ≈ 2e-4 and its
    truth from 2·10⁶ draws (made once, for the checks that share it)."""
    torch.manual_seed(4)
    layers = []
    for n_in, n_out in ((4, 64), (64, 64), (64, 64)):
        linear = nn.Linear(n_in, n_out)
        nn.init.normal_(linear.weight, std=2.5 / math.sqrt(n_in))
        layers += [linear, nn.Tanh()]
    rough = nn.Sequential(*layers, nn.Linear(64, 1)).double().to(dev)
    D4 = Gaussian.standard(4, device=dev)
    with torch.no_grad():
        out = rough(D4.sample(2_000_000, generator=torch.Generator(dev).manual_seed(1)))[:, 0]
    t = float(torch.quantile(out[:500_000].cpu(), 1 - 2e-4))
    return rough, D4, t, float((out > t).double().mean())

def subset_simulation():
    rough, D4, t, truth = rough_tanh()
    rows = []
    for seed in range(3):
        pi = explain(rough, D4, "gaussian", seed=seed)
        e = pi.probability(Above(0, t), flops=8_000 * pi.flops_per_sample)
        assert 0.2 < e.value / truth < 5, (e.value, truth)
        rows.append(f"{e.method} {e.value / truth:.2f}")
    return f"truth {truth:.2e}; estimate/truth: " + ", ".join(rows)
check("rough tanh net: subset simulation or design IS on device", subset_simulation)

def tanh_zero_sample():
    """The zero-sample design estimate on a saturating net on the device: its draws take
    the shaped components, and join the quadratics where they are not degenerate
    (`structured._with_draws`; here they are, and the quadratics answer)."""
    rough, D4, t, truth = rough_tanh()
    e = explain(rough, D4, "cumulant").probability(Above(0, t))
    assert 0.1 < e.value / truth < 10, (e.value, truth, e.method)
    return (f"{e.method} estimate/truth {e.value / truth:.2f}, draws' weight {e.details.get('draws_weight')}, "
            f"interval {e.interval}")
check("rough tanh net: zero-sample design with shaped draws on device", tanh_zero_sample)

def zero_sample_methods():
    two = nn.Sequential(nn.Linear(6, 48), nn.GELU(), nn.Linear(48, 2)).double().to(dev)
    D6 = Gaussian.standard(6, device=dev)
    with torch.no_grad():
        out = two(D6.sample(2_000_000, generator=torch.Generator(dev).manual_seed(2)))
    t0, t1 = (float(torch.quantile(out[:500_000, i].cpu(), 0.999)) for i in (0, 1))
    truth = float(((out[:, 0] > t0) | (out[:, 1] > t1)).double().mean())
    rows = []
    for method in ("polynomial", "auto"):
        pi = explain(two, D6, method)
        e = pi.probability(Any(Above(0, t0), Above(1, t1)))
        assert on_device(pi.predict(torch.randn(3, 6, device=dev, dtype=torch.float64)))
        rows.append(f"{e.method} {math.log10(e.value / truth):+.2f} dex")
    step = nn.Sequential(nn.Linear(5, 3), Step()).double().to(dev)
    cube = BooleanCube(5, device=dev)
    hs = explain(step, cube, "auto").probability(All(Above(0, 0.5), Above(1, 0.5)))
    draws = step(cube.sample(400_000, generator=torch.Generator(dev).manual_seed(3)))
    hs_truth = float(((draws[:, 0] > 0.5) & (draws[:, 1] > 0.5)).double().mean())
    rows.append(f"cube halfspaces {hs.value:.4f} vs sampled {hs_truth:.4f}")
    return "; ".join(rows) + f" (Any truth {truth:.2e})"
check("polynomial, auto and halfspaces zero-sample on device", zero_sample_methods)

def pilot_adaptation():
    """y = ξ, {ξ₁ > 4} ∪ {ξ₂ > 3}: with the β = 3 mode dropped from the search, the pilot's
    uncovered hits bring it back (`adaptation`) on the device."""
    from dataclasses import replace
    from torch.special import ndtr
    from explanations.guided import guided_probability
    from explanations.structured import search
    eye = nn.Linear(2, 2).double().to(dev)
    with torch.no_grad():
        eye.weight.copy_(torch.eye(2, dtype=torch.float64)); eye.bias.zero_()
    pi = explain(eye, Gaussian.standard(2, device=dev), "gaussian")
    event = Any(Above(0, 4.0), Above(1, 3.0))
    found = search(pi, event)
    far_only = replace(found, modes=[m for m in found.modes if m.beta > 3.5])
    truth = 1 - float(ndtr(torch.tensor(4.0, dtype=torch.float64)) * ndtr(torch.tensor(3.0, dtype=torch.float64)))
    e = guided_probability(pi, event, far_only, 4000, None, 0, math.log(truth))
    assert e.details["adapted_modes"] == 1, e.details
    assert abs(e.value - truth) <= 4 * e.details["standard_error"], (e.value, truth)
    return f"estimate/truth {e.value / truth:.3f}, modes {[round(b, 2) for b in e.details['modes']]}"
check("pilot adaptation of the design mixture on device", pilot_adaptation)

def wide_inputs_draws_alone():
    """A 64 → 16 → 1 ReLU net at p ≈ 1e-4: the fits pass what the search leaves, so
    importance draws around the modes answer alone (`structured._fits_afforded`) on the device."""
    from train.models import mlp
    wide = mlp([64, 16, 1], "relu", seed=0, bias_std=0.1).to(dev)
    with torch.no_grad():
        out = wide(torch.randn(2_000_000, 64, device=dev, generator=torch.Generator(dev).manual_seed(2)))[:, 0]
    t = float(torch.quantile(out[:500_000].cpu(), 1 - 1e-4))
    truth = float((out > t).double().mean())
    e = explain(wide, Gaussian.standard(64, device=dev), "cumulant").probability(Above(0, t))
    assert e.sample_equivalents <= 10_000 and abs(math.log10(e.value / truth)) < 0.2, (e.value, truth)
    error = math.log10(e.value / truth)
    return f"{e.details['fits']}; {error:+.2f} dex at {e.sample_equivalents:.0f} sample-equivalents"
check("wide inputs on a small net: draws alone on device", wide_inputs_draws_alone)

def many_clause_union():
    """Any of 12 halfspaces on a 4 → 8 → 6 ReLU net (past inclusion–exclusion: the complement's
    orthant, the copula sized to the budget) on the device."""
    from train.models import mlp
    net = mlp([4, 8, 6], "relu", seed=0, bias_std=0.1).to(dev)
    with torch.no_grad():
        out = net(torch.randn(2_000_000, 4, device=dev, generator=torch.Generator(dev).manual_seed(1)))
    q = torch.quantile(out[:500_000].cpu(), torch.tensor([1e-3, 1 - 1e-3]), dim=0)
    event = Any(*[Above(i, float(q[1, i])) for i in range(6)], *[Below(i, float(q[0, i])) for i in range(6)])
    truth = float(event.evaluate(out).double().mean())
    e = explain(net, Gaussian.standard(4, device=dev), "auto").probability(event)
    assert e.sample_equivalents <= 10_000 and abs(math.log10(e.value / truth)) < 0.15, (e.value, truth)
    return f"{e.method} {math.log10(e.value / truth):+.2f} dex at {e.sample_equivalents:.0f} sample-equivalents"
check("many-clause union within the budget on device", many_clause_union)

print("FAILURES:", failures or "none")
