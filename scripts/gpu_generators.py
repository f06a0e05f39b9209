"""Train larger generators on the shipped tokenizer on a lent GPU, and bring them back to be scored on the CPU.

    python scripts/gpu_generators.py                          # on a CUDA machine: the default variants, into $OUT
    python scripts/gpu_generators.py --dry-run --out /tmp/g   # a CPU check: tiny sizes, a few steps (what the tests run)

Why: on 2 CPU cores a d_model 192 generator takes 2.4 s a step (80 minutes for 2 000 steps), so the larger generators
that lesson 10's experiments point to (d_model 192-256, 640+ shapes per class, 3 000+ steps) do not fit a session.
On an H100 a nano generator step takes about 26 ms (gpu_suite_cuda.json), so one short device call trains several.

Each variant `NAME=WIDTH:SHAPES:STEPS` (d_model, training shapes per class, steps) is
`scripts/train_pretrained.py --tokenizer-from data_samples/pretrained --generator-width WIDTH --n-train SHAPES
--generator-steps STEPS` (train_pretrained.retrain_generator, seed 0, the shipped recipe otherwise; bf16 autocast on
CUDA), written to OUT/NAME/ as `nano_generator.pt` and `nano.json` (the tokenizer copy is left out: the folders come
back through the device tool's limit of 8 files). A variant that would start after `--max-s` seconds is skipped, and
OUT/gpu_generators.json records every variant's time, loss and status as it goes. To score one here:

    cp data_samples/pretrained/nano_tokenizer.pt <folder>/ && python scripts/eval_pretrained.py --dir <folder> --no-write
"""
from __future__ import annotations
import argparse, json, os, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(ROOT / 'scripts'))
import torch

DEFAULT = 'd192_640_4k=192:640:4000,d256_640_4k=256:640:4000,d256_640_8k=256:640:8000'


def parse_variants(text: str) -> list[tuple[str, int, int, int]]:
    "'NAME=WIDTH:SHAPES:STEPS,...' -> [(name, width, shapes, steps)]; names are folder names (letters, digits, _ -)."
    out = []
    for item in text.split(','):
        try:
            name, spec = item.split('=')
            width, shapes, steps = (int(v) for v in spec.split(':'))
        except ValueError:
            raise ValueError(f"variant {item!r}: expected NAME=WIDTH:SHAPES:STEPS, e.g. d256_640_4k=256:640:4000") from None
        if not name or not all(c.isalnum() or c in '_-' for c in name): raise ValueError(f"variant name {name!r}: letters, digits, _ and - only")
        if min(width, shapes, steps) < 1: raise ValueError(f"variant {item!r}: width, shapes and steps must be >= 1")
        out.append((name, width, shapes, steps))
    if len({v[0] for v in out}) != len(out): raise ValueError(f"variant names repeat: {[v[0] for v in out]}")
    return out


def main(argv=None):
    from train_pretrained import retrain_generator
    from nsp_explore.transformer import TransformerConfig
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--variants', default=DEFAULT, help=f'NAME=WIDTH:SHAPES:STEPS,... (default {DEFAULT})')
    ap.add_argument('--out', default=os.environ.get('OUT'), help='where the folders go (default $OUT)')
    ap.add_argument('--src', default=str(ROOT / 'data_samples' / 'pretrained'), help='the pair whose tokenizer is kept')
    ap.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    ap.add_argument('--max-s', type=float, default=480.0, help='start no variant after this many seconds')
    ap.add_argument('--dry-run', action='store_true', help='every variant at width 32, 1 shape per class, 3 steps (CPU check)')
    a = ap.parse_args(argv)
    if not a.out: ap.error('--out (or $OUT) is needed')
    variants = parse_variants(a.variants)
    if a.dry_run: variants = [(name, 32, 1, 3) for name, *_ in variants]
    out, t0, rows = Path(a.out), time.time(), []
    out.mkdir(parents=True, exist_ok=True)
    gpu = torch.cuda.get_device_name(0) if torch.device(a.device).type == 'cuda' else None
    for name, width, shapes, steps in variants:
        row = dict(name=name, d_model=width, n_train=shapes, steps=steps)
        if time.time() - t0 > a.max_s:
            row['status'] = f'skipped: {a.max_s:.0f} s spent'
        else:
            cmd = (f'scripts/train_pretrained.py --tokenizer-from data_samples/pretrained --generator-width {width} '
                   f'--n-train {shapes} --generator-steps {steps} --out {name}')
            t = time.time()
            try:
                _, gen, _, rec = retrain_generator(Path(a.src), steps, out / name, a.device, n_train=shapes, seed=0, command=cmd,
                                                   gen_cfg=TransformerConfig.preset('nano', d_model=width))
                (out / name / 'nano_tokenizer.pt').unlink()           # the shipped one: copy it back in to score
                row.update(status='done', wall_s=round(time.time() - t, 1), generator_s=round(rec['generator_s'], 1),
                           loss=round(rec['generator_loss'], 4), loss_per_scale=rec['generator_loss_per_scale'],
                           params=gen.n_params())
            except Exception as e:                                     # one failed variant must not cost the others
                row.update(status=f'error: {type(e).__name__}: {e}'[:500], wall_s=round(time.time() - t, 1))
        rows.append(row)
        print(json.dumps(row), flush=True)
        (out / 'gpu_generators.json').write_text(json.dumps(dict(date=time.strftime('%Y-%m-%d %H:%M:%S'), device=a.device, gpu=gpu,
                                                                 dry_run=a.dry_run, total_s=round(time.time() - t0, 1), rows=rows), indent=2))
    return rows


if __name__ == '__main__':
    main()
