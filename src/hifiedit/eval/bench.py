"""`hifiedit bench`: time per DDIM generation step, plain vs rectified.

A rectified step needs a base pass (for P_t), the rectifier, and a modulated pass at the same
(x_t, t) (DESIGN §1), so ≈ 2× a plain step is the floor of a straight implementation; the
design budget is ≤ 2.5× at batch 16. Each step is timed through ``generate``'s callback, i.e.
exactly what a user's chain pays, ε-function and DDIM update included; the median over steps
(after one warm-up chain) is reported. Timing does not depend on the weights, so without a
trained rectifier a freshly initialised one is timed, and the report says so.

Memory: on a CUDA GPU, the peak of allocated memory during each (method, batch) measurement;
on the CPU, the process's peak resident set size at the end (model loading included; PyTorch
gives no per-measurement peak there).
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import threading
import time
from pathlib import Path

import torch

from hifiedit.errors import HifieditError
from hifiedit.diffusion.backbone import module_device
from hifiedit.models import portable_name
from hifiedit.runtime import machine_description, precision_name, resolve_runtime, write_text_atomic


def step_times_ms(eps_fn, x_t0: torch.Tensor, timesteps, alphas_cumprod, repeats: int,
                  device: torch.device | None = None) -> list[float]:
    """Wall time of every generation step over ``repeats`` chains, after one warm-up chain.
    On a GPU each step is synchronised before its time is read (kernels run asynchronously)."""
    from hifiedit.diffusion.ddim import generate

    sync = (lambda: torch.cuda.synchronize(device)) if device is not None and \
        device.type == "cuda" else (lambda: None)
    times: list[float] = []
    with torch.no_grad():
        generate(eps_fn, x_t0, timesteps, alphas_cumprod)  # warm-up: allocator, kernels
        for _ in range(repeats):
            sync()
            last = [time.perf_counter()]

            def tick(*_):
                sync()
                now = time.perf_counter()
                times.append(1000 * (now - last[0]))
                last[0] = now

            generate(eps_fn, x_t0, timesteps, alphas_cumprod, callback=tick)
    return times


def peak_rss_mb() -> float:
    """This process's peak resident set size so far, in MiB (Linux reports KiB, macOS bytes)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def _rectifier(backbone, name: str | None):
    """(rectifier, description): a trained one when available, else a fresh (zero) one."""
    from hifiedit.rectifier import Rectifier, load_rectifier

    rectifier, what = load_rectifier(name, backbone)
    if rectifier is not None:
        return rectifier, what
    fresh = Rectifier.for_unet(backbone.unet).to(module_device(backbone.unet)).eval()
    fresh.requires_grad_(False)
    return fresh, ("freshly initialised (no trained rectifier given or shipped); step time "
                   "does not depend on the weights")


def run_bench(model: str = "default", rectifier: str | None = "default", batches=(1, 16),
              t0: int = 400, steps: int = 10, repeats: int = 2, json_path: Path | None = None,
              force: bool = False, backbone=None, device: str | torch.device = "cpu",
              precision: str = "fp32") -> dict:
    from hifiedit.diffusion.backbone import load_backbone
    from hifiedit.diffusion.schedule import ddim_timesteps
    from hifiedit.rectifier import rectified_eps_fn

    if json_path is not None and Path(json_path).exists() and not force:
        raise HifieditError(f"{json_path} exists; pass --force to overwrite it.")
    if steps < 1 or repeats < 1 or not batches or min(batches) < 1:
        raise HifieditError("bench needs steps ≥ 1, repeats ≥ 1 and batch sizes ≥ 1.")
    rt = resolve_runtime(device, precision)
    backbone = backbone or load_backbone(model, device=rt.device, compute_dtype=rt.dtype)
    dev = module_device(backbone.unet)
    if not 1 <= steps <= t0 < backbone.num_train_timesteps:
        raise HifieditError(f"bench needs 1 ≤ steps ≤ t0 < {backbone.num_train_timesteps}.")
    rect, rect_desc = _rectifier(backbone, rectifier)
    grid = ddim_timesteps(t0, steps)
    size, ch = backbone.sample_size, backbone.in_channels
    step_ms: dict[str, dict[str, float]] = {"ddim": {}, "rectified": {}}
    peak_mb: dict[str, dict[str, float]] = {"ddim": {}, "rectified": {}}
    for b in batches:
        g = torch.Generator().manual_seed(0)
        x0 = (torch.rand((b, ch, size, size), generator=g) * 2 - 1).to(dev)
        x_t0 = torch.randn((b, ch, size, size), generator=g).to(dev)
        fns = {"ddim": backbone.eps, "rectified": rectified_eps_fn(backbone, rect, x0, timesteps=grid)}
        for name, fn in fns.items():
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
            times = step_times_ms(fn, x_t0, grid, backbone.alphas_cumprod, repeats, dev)
            step_ms[name][str(b)] = round(statistics.median(times), 2)
            if dev.type == "cuda":
                peak_mb[name][str(b)] = round(torch.cuda.max_memory_allocated(dev) / 2**20, 1)
    memory = ({"cuda_peak_allocated_mb": peak_mb} if dev.type == "cuda" else
              {"cpu_peak_rss_mb": round(peak_rss_mb(), 1)})
    report = {
        "step_ms": step_ms,
        "ratio": {k: round(step_ms["rectified"][k] / step_ms["ddim"][k], 3) for k in step_ms["ddim"]},
        **memory,
        "device": str(dev),
        "precision": precision_name(backbone.compute_dtype),
        "machine": machine_description(),
        "model": portable_name(backbone.path or model),
        "unet_params": sum(p.numel() for p in backbone.unet.parameters()),
        "image_size": size,
        "rectifier": rect_desc,
        "rectifier_params": sum(p.numel() for p in rect.parameters()),
        "timed": f"median of {repeats}×{steps} generation steps (t0 {t0}) after one warm-up chain",
    }
    if json_path is not None:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(Path(json_path), json.dumps(report, indent=1) + "\n")
    return report


def format_bench(report: dict) -> str:
    lines = [f"{'batch':>5} {'ddim ms':>9} {'rectified ms':>13} {'ratio':>6}"]
    for b, plain in report["step_ms"]["ddim"].items():
        lines.append(f"{b:>5} {plain:9.1f} {report['step_ms']['rectified'][b]:13.1f} "
                     f"{report['ratio'][b]:6.2f}")
    lines.append(f"rectifier: {report['rectifier']}")
    if "cuda_peak_allocated_mb" in report:
        peaks = report["cuda_peak_allocated_mb"]
        lines.append("peak GPU memory (MiB): " + ", ".join(
            f"batch {b}: ddim {peaks['ddim'][b]}, rectified {peaks['rectified'][b]}"
            for b in peaks["ddim"]))
    elif "cpu_peak_rss_mb" in report:
        lines.append(f"peak process memory (RSS): {report['cpu_peak_rss_mb']} MiB")
    lines.append(f"device: {report.get('device', 'cpu')}, precision {report.get('precision', 'fp32')}")
    lines.append(f"machine: {report['machine']}")
    return "\n".join(lines)


# ------------------------------------------------------------------ one U-Net pass


def _rss_bytes() -> int | None:
    """Resident memory of this process now (Linux /proc), or None where it cannot be read."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class _PeakMemory:
    """Peak memory a block adds: CUDA's allocator statistics on a GPU; on a CPU the resident
    size sampled every millisecond by a thread (PyTorch kernels release the GIL, so the sampler
    runs while a pass computes)."""

    def __init__(self, device: torch.device):
        self.device, self.extra_bytes = device, None

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            return self
        self.base = _rss_bytes()
        self.peak, self.stop = self.base, threading.Event()

        def sample():
            while not self.stop.is_set():
                now = _rss_bytes()
                if now is not None and (self.peak is None or now > self.peak):
                    self.peak = now
                time.sleep(0.001)

        self.thread = threading.Thread(target=sample, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.extra_bytes = torch.cuda.max_memory_allocated(self.device) - self.base
            return
        self.stop.set()
        self.thread.join()
        now = _rss_bytes()
        if self.base is not None and now is not None:
            self.extra_bytes = max(self.peak, now) - self.base


def _pass_stats(fn, device: torch.device, repeats: int) -> dict:
    """Median wall time of `fn` over `repeats` calls after one warm-up, and the most memory any
    call (warm-up included: the allocator may keep what the first call freed) added."""
    times, cpu, extra = [], [], []
    for i in range(repeats + 1):
        with _PeakMemory(device) as mem:
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            elapsed, elapsed_cpu = time.perf_counter() - start, time.process_time() - start_cpu
        if i:
            times.append(1000 * elapsed)
            cpu.append(1000 * elapsed_cpu)
        if mem.extra_bytes is not None:
            extra.append(mem.extra_bytes)
    return {"ms": round(statistics.median(times), 1), "cpu_ms": round(statistics.median(cpu), 1),
            "added_memory_mb": round(max(extra) / 2**20, 1) if extra else None}


def run_unet_pass_bench(model: str = "default", batches=(1,), repeats: int = 2,
                        device: str = "cpu", json_path: Path | None = None, force: bool = False,
                        backbone=None, precision: str = "fp32") -> dict:
    """Time and memory of one U-Net pass of a model folder at its own resolution: a forward pass
    without gradients (what inversion and generation pay per step) and a forward + backward
    through every U-Net weight (an upper bound of what rectifier and edit training pay per
    sample: they backpropagate through the same activations but keep fewer gradients).
    ``device`` and ``precision``: :func:`hifiedit.runtime.resolve_runtime` (the passes run
    under its autocast; the weights stay as loaded)."""
    from hifiedit.diffusion.backbone import load_backbone

    if json_path is not None and Path(json_path).exists() and not force:
        raise HifieditError(f"{json_path} exists; pass --force to overwrite it.")
    if repeats < 1 or not batches or min(batches) < 1:
        raise HifieditError("bench needs repeats ≥ 1 and batch sizes ≥ 1.")
    rt = resolve_runtime(device, precision)
    dev = rt.device
    rss_before_load = _rss_bytes()
    backbone = backbone or load_backbone(model, device=dev, compute_dtype=rt.dtype)
    unet = backbone.unet.to(dev)
    size, ch = backbone.sample_size, backbone.in_channels
    results: dict[str, dict[str, dict]] = {"forward": {}, "forward_backward": {}}
    for b in batches:
        g = torch.Generator().manual_seed(0)
        x = torch.randn((b, ch, size, size), generator=g).to(dev)
        t = torch.full((b,), backbone.num_train_timesteps // 2, dtype=torch.long, device=dev)

        def forward():
            with torch.no_grad(), rt.autocast():
                unet(x, t)

        def forward_backward():
            with rt.autocast():
                out = unet(x, t).sample
            out.float().square().mean().backward()
            unet.zero_grad(set_to_none=True)

        results["forward"][str(b)] = _pass_stats(forward, dev, repeats)
        unet.requires_grad_(True)
        try:
            results["forward_backward"][str(b)] = _pass_stats(forward_backward, dev, repeats)
        finally:
            unet.requires_grad_(False)
    params = sum(p.numel() for p in unet.parameters())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 if dev.type == "cpu" else \
        torch.cuda.max_memory_allocated(dev)
    report = {
        "unet_pass": results,
        "model": str(backbone.path or model),
        "image_size": size,
        "parameters": params,
        "weights_mb": round(sum(p.numel() * p.element_size() for p in unet.parameters()) / 2**20, 1),
        "dtype": str(next(unet.parameters()).dtype).replace("torch.", ""),
        "device": str(dev),
        "precision": rt.precision,
        "process_peak_mb": round(peak / 2**20, 1),
        "process_before_load_mb": round(rss_before_load / 2**20, 1) if rss_before_load else None,
        "machine": machine_description(),
        # A shared machine's other work slows every pass: say how busy it was.
        "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "timed": (f"median of {repeats} passes after one warm-up, timestep "
                  f"{backbone.num_train_timesteps // 2}; cpu_ms: CPU time of the process "
                  "during a pass (all threads; on a busy machine nearer the cost on an idle one "
                  "than the wall time ms); added_memory_mb: the most memory one pass "
                  "added over what was held before it (GPU: allocator peak; CPU: resident size "
                  "sampled every ms); process_peak_mb: the whole process's peak (CPU: max RSS)"),
    }
    if json_path is not None:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(Path(json_path), json.dumps(report, indent=1) + "\n")
    return report


def format_unet_pass(report: dict) -> str:
    lines = [f"{'batch':>5} {'forward ms':>11} {'cpu ms':>9} {'+MB':>8} {'fwd+bwd ms':>11} "
             f"{'cpu ms':>9} {'+MB':>8}"]
    for b, fwd in report["unet_pass"]["forward"].items():
        fb = report["unet_pass"]["forward_backward"][b]
        lines.append(f"{b:>5} {fwd['ms']:11.1f} {fwd['cpu_ms']:9.1f} {fwd['added_memory_mb'] or 0:8.1f} "
                     f"{fb['ms']:11.1f} {fb['cpu_ms']:9.1f} {fb['added_memory_mb'] or 0:8.1f}")
    lines.append(f"{report['parameters'] / 1e6:.1f} M parameters ({report['weights_mb']} MB "
                 f"{report['dtype']}) at {report['image_size']} px on {report['device']} "
                 f"({report.get('precision', 'fp32')}); "
                 f"process peak {report['process_peak_mb']} MB")
    lines.append(f"machine: {report['machine']}")
    return "\n".join(lines)
