"""Train the pretrained nano pair (tokenizer + next-scale generator) that ships in data_samples/pretrained/.

    python scripts/train_pretrained.py --tokenizer-steps 4500 --generator-steps 2000 --scales 1,4,16,64,256 \
        --sibling-slots --fixed-norm --val-every 450 --out data_samples/pretrained

(the shipped tokenizer's command: 46 minutes on 2 CPU cores with short jobs beside it at times; the pair before it,
1 500 tokenizer steps, took 11 + 18.5 minutes on 2 idle cores). The shipped generator was then retrained on that
tokenizer, twice as wide, on eight times the shapes and for 3 000 steps (82 minutes on 2 idle cores; `"generator_command"`
in nano.json records the run, made into a scratch folder whose generator and record were then copied here; the same
recipe at 2 000 steps took 50 minutes, the generator before it, on 160 shapes per class, 59 minutes):

    python scripts/train_pretrained.py --tokenizer-from data_samples/pretrained --generator-width 128 --n-train 320 \
        --generator-steps 3000 --out data_samples/pretrained

Its sampling setting (one temperature and one top-p mass per token scale, `"sampling"` in nano.json) is not trained:
it was chosen on validation shapes with `scripts/eval_pretrained.py --refs val --no-recon --metrics cd
--temperature T1,...,T5 --top-p P1,...,P5` (the
best score among settings that repeat no more points than the tokenizer's reconstructions; see
benchmarks/results/pretrained_nano_sampling_sweep_cpu.json; `--seed 1`, `--seed 2` draw the samples again, and a
candidate is judged on the mean of three draws: pretrained_nano_seed_spread_cpu.json), then scored on the test
shapes by `scripts/eval_pretrained.py`.

`--tokenizer-from DIR` keeps the tokenizer of the pair folder DIR and trains only a new generator (with
`--generator-width W`, a d_model other than nano's 64): how benchmarks/bench_generator_steps.py and the wider-generator
experiment of lesson 10 were made; `--generator-init CKPT --generator-lr LR` (with `--tokenizer-from`, and best a new
`--seed`) continues a generator from a checkpoint instead of a fresh start; `--generator-ckpt PATH` keeps a training
checkpoint there (every 100 steps and on Ctrl-C / SIGTERM) and the same command run again resumes it exactly, so a
two-hour CPU run can span several sittings. On a lent GPU, `scripts/gpu_generators.py` runs several `--tokenizer-from` variants
(larger generators) in one call. `--generator-mask-finest` trains a generator whose finest scale also sees
the codes drawn there so far (lesson 10; `scripts/eval_pretrained.py --finest-passes P` samples it in P passes).
`--generator-corrective P` trains a share P of each batch's rows on one
scale drawn by the generator itself and corrective finer tokens (`generate.corrective_loss`, lesson 10; measured there:
less varied samples, not shipped). `--tokenizer-init DIR` continues the
tokenizer of the pair folder DIR (its weights and its frame) for `--tokenizer-steps` more steps on `--n-train` shapes per
category at `--tokenizer-lr` (default 5e-4), and saves that tokenizer alone to `--out`: its codes move, so a generator must
then be trained on it (`--tokenizer-from OUT`, best with `--generator-init DIR/nano_generator.pt`);
`scripts/eval_pretrained.py --dir OUT --no-samples` scores its reconstructions in between. Everything is seeded (`--seed`); the JSON written beside the checkpoints records the exact command, the steps,
the device and the wall time of each stage, so `load_pretrained('nano')` users can see how it was made and
rerun it. After training, the tokenizer's decoded scale is calibrated on the training shapes
(`calibrate_recon_scale`, recorded as `"recon_scale"`; tokens and weights are unchanged by it). Runs on any device (bf16 autocast for the generator on CUDA; the tokenizer is always float32), so a
CPU rerun reproduces the recipe, not the bits of a GPU run.
"""
from __future__ import annotations
import argparse, json, shutil, sys, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch

from nsp_explore.core import default_device, versions
from nsp_explore.train import TrainingInterrupted, fit
from nsp_explore.train_tokenizer import calibrate_recon_scale, tokenizer_datasets, tokenizer_loss, tokenizer_train_config, _val_cd
from nsp_explore.tokenizer import PointNSPTokenizer, TokenizerConfig
from nsp_explore.transformer import ScaleTransformer, TransformerConfig
from nsp_explore.generate import LOSS_WEIGHTINGS, cache_tokens, generator_loss_fn, generator_train_config, with_masked_finest


def train_pair(tokenizer_steps: int, generator_steps: int, out: Path, device=None, seed: int = 0, batch_size: int = 32,
               generator_batch: int = 64, n_train: int | None = None, cache_dir=None, tok_cfg=None, gen_cfg=None,
               val_every: int = 0) -> dict:
    "Train and save `nano_tokenizer.pt`, `nano_generator.pt` and `nano.json` under `out`; returns the record."
    device = default_device(None if device is None else str(device))
    out = Path(out); out.mkdir(parents=True, exist_ok=True)
    tok_cfg = tok_cfg or TokenizerConfig.preset('nano')
    rec = dict(command=' '.join(sys.argv), seed=seed, device=str(device), versions=versions(),
               tokenizer_config=tok_cfg.to_dict())
    t0 = time.time()
    train, val = tokenizer_datasets(tok_cfg, n_train=n_train, seed=seed, cache_dir=cache_dir)
    rec['data_s'] = time.time() - t0
    torch.manual_seed(seed)
    tok = PointNSPTokenizer(tok_cfg).set_frame(train.dataset.normalizer)
    tcfg = tokenizer_train_config('nano', steps=tokenizer_steps, batch_size=batch_size, seed=seed,
                                  warmup_steps=min(200, tokenizer_steps // 10 + 1), log_every=max(1, tokenizer_steps // 20),
                                  val_every=val_every)
    t0 = time.time()
    h = fit(tok, train, tokenizer_loss, tcfg, device=device, val_fn=_val_cd(val))
    rec.update(tokenizer_s=time.time() - t0, tokenizer_steps=tokenizer_steps, tokenizer_train=tcfg.to_dict(),
               tokenizer_val_cd=h.val[-1]['cd'] if h.val else None,
               tokenizer_val_curve=[{k: round(float(v), 5) for k, v in r.items()} for r in h.val])
    tok = tok.eval()
    # the decoded clouds' scale, fitted on the training shapes (the raw decoder shrinks them; see 08a_train_tokenizer)
    rec['recon_scale'] = calibrate_recon_scale(tok, train.dataset)['recon_scale']
    gen, grec = train_generator_stage(tok, train, generator_steps, device, seed, generator_batch, gen_cfg)
    rec.update(**grec, categories=list(train.dataset.categories))
    _save(tok, out / 'nano_tokenizer.pt'); _save(gen, out / 'nano_generator.pt')
    (out / 'nano.json').write_text(json.dumps(rec, indent=2, default=str))
    return rec


def train_generator_stage(tok, train, generator_steps: int, device, seed: int = 0, generator_batch: int = 64, gen_cfg=None,
                          max_teacher_gb: float = 8.0, init=None, lr: float | None = None, loss_weighting: str = 'scale',
                          ckpt_path=None, ckpt_every: int = 100, corrective: float = 0.0, mask_finest: bool = False, **fit_kw):
    """The pair's second stage: a nano `ScaleTransformer` trained on `tok`'s tokens of `train` (one sequence per FPS
    trajectory, `tok.cfg.fps_trajectories` passes). The transformer's inputs are cached beside the tokens when they fit
    in `max_teacher_gb` (640 shapes per class need 2.3 GB); past that each batch decodes its own from the tokenizer
    (same inputs, slower steps). `init`: a generator checkpoint to start from (a warm restart: its config, not
    `gen_cfg`; best with a new `seed`, so the batches are not the first run's again, and a smaller `lr`).
    `loss_weighting`: `next_scale_loss`'s `weighting` ('scale', the default, 'token' or 'mixed'). `corrective` > 0: that
    share of each batch trains on a scale drawn by the generator and corrective finer tokens (`corrective_loss`). `mask_finest`:
    a generator whose finest scale also sees the codes drawn there so far (`TransformerConfig.mask_finest`; with `init`, the
    plain generator gets a zero code embedding, `generate.with_masked_finest`), sampled with `finest_passes`. `ckpt_path`: a training
    checkpoint (weights, optimizer, schedule, RNG) written there every `ckpt_every` steps and on Ctrl-C / SIGTERM; the same
    call again resumes it exactly (a run longer than one sitting). `fit_kw` goes to `fit` (e.g. `callbacks`).
    Returns `(generator, record)`."""
    if loss_weighting not in LOSS_WEIGHTINGS: raise ValueError(f"loss_weighting must be one of {LOSS_WEIGHTINGS}, got {loss_weighting!r}")
    device = default_device(None if device is None else str(device))
    t0 = time.time()
    seqs = cache_tokens(tok, train, passes=tok.cfg.fps_trajectories, device=device, max_teacher_gb=max_teacher_gb)
    if device.type == 'cuda': seqs = seqs.to(device)      # batches gathered on the GPU
    torch.manual_seed(seed)
    if init is not None:
        from nsp_explore.generate import load_generator
        gen = load_generator(init)
        if gen.n_classes != len(train.dataset.categories) or tuple(gen.cfg.scales) != tuple(tok.scales):
            raise ValueError(f"{init}: a generator for {gen.n_classes} classes and scales {gen.cfg.scales}, the data has "
                             f"{len(train.dataset.categories)} classes and the tokenizer scales {tok.scales}")
        if mask_finest and not gen.cfg.mask_finest: gen = with_masked_finest(gen)
    else:
        cfg = gen_cfg or TransformerConfig.preset('nano')
        gen = ScaleTransformer.for_tokenizer(cfg.override(mask_finest=True) if mask_finest else cfg, tok, len(train.dataset.categories))
    gcfg = generator_train_config('nano', steps=generator_steps, batch_size=generator_batch, seed=seed,
                                  warmup_steps=min(200, generator_steps // 10 + 1), log_every=max(1, generator_steps // 20),
                                  ckpt_every=ckpt_every if ckpt_path is not None else 0, **({} if lr is None else dict(lr=lr)))
    loss_fn = generator_loss_fn(tok, seqs.has_teacher, loss_weighting, corrective)
    hg = fit(gen, seqs.sampler(gcfg.batch_size, gcfg.seed), loss_fn, gcfg, device=device, ckpt_path=ckpt_path, **fit_kw)
    resumed = dict(generator_resumed_at_step=hg.start_step, generator_s_note='the wall time of the last call only: it '
                   'resumed the checkpoint at generator_resumed_at_step') if hg.start_step else {}
    return gen, dict(generator_s=time.time() - t0, generator_steps=generator_steps, generator_train=gcfg.to_dict(), **resumed,
                     generator_loss=hg.last('loss'), n_train_shapes=len(train), generator_init=None if init is None else str(init),
                     generator_loss_weighting=loss_weighting, generator_corrective=corrective, generator_mask_finest=mask_finest,
                     generator_loss_per_scale=[round(hg.last(f'loss_{k}'), 4) for k in range(len(tok.scales))])


def retrain_generator(pair_dir: Path, generator_steps: int, out: Path, device=None, generator_batch: int = 64, gen_cfg=None,
                      n_train: int | None = None, n_val: int | None = None, command: str | None = None,
                      seed: int | None = None, init=None, lr: float | None = None, loss_weighting: str = 'scale', **stage_kw):
    """Stage two alone: a new generator on the tokenizer of the pair in `pair_dir` (its seed and training shapes;
    `n_train` shapes per category instead of the data default, built in the tokenizer's frame; a generator `seed`
    other than the pair's), saved with that tokenizer and its record (scores dropped: they were the old generator's)
    as the pair folder `out` (may be `pair_dir`). `init` / `lr`: start from that generator checkpoint at that peak
    learning rate, `loss_weighting` ('scale', 'token' or 'mixed'): how the scales' losses are averaged; `stage_kw`
    (`ckpt_path`, `ckpt_every`, `fit`'s keywords): `train_generator_stage`'s. Returns `(tokenizer, generator, val dataset, record)`."""
    from nsp_explore.train_tokenizer import load_tokenizer
    pair_dir, out = Path(pair_dir), Path(out)
    dev = default_device(None if device is None else str(device))
    tok = load_tokenizer(pair_dir / 'nano_tokenizer.pt').to(dev)      # a pair folder, or continue_tokenizer's output
    info = json.loads((pair_dir / 'nano.json').read_text()) if (pair_dir / 'nano.json').exists() else {}
    train, val = tokenizer_datasets(tok.cfg, seed=info.get('seed', 0), n_train=n_train, n_val=n_val,
                                    normalizer=tok.normalizer())     # the tokenizer's frame, whatever n_train is
    gen_seed = info.get('seed', 0) if seed is None else int(seed)
    gen, grec = train_generator_stage(tok, train, generator_steps, dev, gen_seed, generator_batch, gen_cfg, init=init, lr=lr,
                                      loss_weighting=loss_weighting, **stage_kw)
    # the old generator's scores and notes describe it, not the new one (its resume keys come back only if this run resumed)
    stale = ('scores', 'scores_sampling', 'generator_note', 'generator_resumed_at_step', 'generator_s_note')
    rec = {k: v for k, v in info.items() if k not in stale}
    rec.update(grec, generator_seed=gen_seed, generator_command=command or ' '.join(sys.argv), generator_device=str(dev),
               generator_config={k: v for k, v in gen.cfg.to_dict().items()
                                 if k not in ('tokenizer_dim', 'scales', 'n_classes', 'codebook_size')})
    out.mkdir(parents=True, exist_ok=True)
    if (out / 'nano_tokenizer.pt').resolve() != (pair_dir / 'nano_tokenizer.pt').resolve():
        shutil.copy(pair_dir / 'nano_tokenizer.pt', out / 'nano_tokenizer.pt')
    _save(gen, out / 'nano_generator.pt')
    (out / 'nano.json').write_text(json.dumps(rec, indent=2, default=str))
    return tok, gen, val, rec


def continue_tokenizer(pair_dir: Path, tokenizer_steps: int, out: Path, device=None, batch_size: int = 32,
                       n_train: int | None = None, seed: int | None = None, lr: float | None = None, val_every: int = 0,
                       command: str | None = None):
    """Stage one again, from the tokenizer of the pair in `pair_dir`: `tokenizer_steps` more steps on `n_train` shapes
    per category, built in that tokenizer's frame from the pair's data seed (so the validation and test shapes stay the
    held-out ones, and the first training shapes per category are those it saw), batches drawn with `seed` (default the
    pair's + 1), at peak learning rate `lr` (default a quarter of the preset's). The decoder trains raw (`recon_scale` 1) and
    is calibrated again afterwards. Saves only `nano_tokenizer.pt` and `nano.json` under `out`: its codes moved, so the
    pair's generator no longer fits it (`retrain_generator(out, ..., init=old generator)` makes the new pair).
    Returns `(tokenizer, record)`."""
    from nsp_explore.train_tokenizer import load_tokenizer
    pair_dir, out = Path(pair_dir), Path(out)
    dev = default_device(None if device is None else str(device))
    tok = load_tokenizer(pair_dir / 'nano_tokenizer.pt').to(dev)
    info = json.loads((pair_dir / 'nano.json').read_text()) if (pair_dir / 'nano.json').exists() else {}
    data_seed = int(info.get('seed', 0))
    seed = data_seed + 1 if seed is None else int(seed)
    t0 = time.time()
    train, val = tokenizer_datasets(tok.cfg, seed=data_seed, n_train=n_train, normalizer=tok.normalizer())
    data_s = time.time() - t0
    tok.cfg = tok.cfg.override(recon_scale=1.0)                          # the raw decoder trains, as in train_pair
    base = tokenizer_train_config('nano')
    tcfg = tokenizer_train_config('nano', steps=tokenizer_steps, batch_size=batch_size, seed=seed,
                                  lr=base.lr / 4 if lr is None else lr, warmup_steps=min(100, tokenizer_steps // 10 + 1),
                                  log_every=max(1, tokenizer_steps // 20), val_every=val_every)
    torch.manual_seed(seed)
    t0 = time.time()
    h = fit(tok, train, tokenizer_loss, tcfg, device=dev, val_fn=_val_cd(val))
    tok = tok.eval()
    stale = ('generator', 'scores', 'sampling', 'n_train_shapes', 'machine_note', 'recon_scale')
    rec = {k: v for k, v in info.items() if not k.startswith(stale)}
    rec.update(tokenizer_init=str(pair_dir / 'nano_tokenizer.pt'), tokenizer_init_steps=info.get('tokenizer_steps'),
               tokenizer_command=command or ' '.join(sys.argv), tokenizer_seed=seed, tokenizer_device=str(dev),
               tokenizer_data_s=data_s, tokenizer_s=time.time() - t0, tokenizer_steps=tokenizer_steps,
               tokenizer_train=tcfg.to_dict(), tokenizer_n_train_shapes=len(train),
               tokenizer_val_cd=h.val[-1]['cd'] if h.val else None,
               tokenizer_val_curve=[{k: round(float(v), 5) for k, v in r.items()} for r in h.val],
               recon_scale=calibrate_recon_scale(tok, train.dataset)['recon_scale'],
               recon_scale_note=f'fitted after training by calibrate_recon_scale on the {len(train)} training shapes')
    out.mkdir(parents=True, exist_ok=True)
    _save(tok, out / 'nano_tokenizer.pt')
    (out / 'nano.json').write_text(json.dumps(rec, indent=2, default=str))
    return tok, rec


def _save(model, path: Path):
    "A weights-only checkpoint in `fit`'s format (no optimizer state: the files ship in the wheel)."
    from nsp_explore.train import save_checkpoint, TrainConfig
    save_checkpoint(path, model.cpu().float(), None, None, 0, TrainConfig.preset('nano'), extra={})


if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--tokenizer-steps', type=int, default=3000)
    ap.add_argument('--generator-steps', type=int, default=3000)
    ap.add_argument('--out', default='data_samples/pretrained')
    ap.add_argument('--device', default=None)
    ap.add_argument('--seed', type=int, default=None, help='the seed (default 0; with --tokenizer-from: the pair\'s own)')
    ap.add_argument('--scales', default=None, help="token scales, e.g. 1,4,16,64,256 (the finest = the full cloud: "
                    "benchmarks/ablate_tokenizer.py measured it far better than nano's 64 leaves of 4 points)")
    ap.add_argument('--sibling-slots', action='store_true', help="the decoder knows each node's slot in its family "
                    "(TokenizerConfig.sibling_slots: siblings that draw the same code no longer decode to one point)")
    ap.add_argument('--fixed-norm', action='store_true', help="no learned gain on the encoder output "
                    "(TokenizerConfig.norm_affine=False): with it the gain grew 2.5x and the commitment loss 14x over 1500 steps")
    ap.add_argument('--val-every', type=int, default=0, help='validation Chamfer every this many tokenizer steps (recorded)')
    ap.add_argument('--generator-width', type=int, default=None, help="the generator's d_model (nano preset: 64)")
    ap.add_argument('--tokenizer-from', default=None, help='a pair folder: keep its tokenizer, train only a new generator '
                    '(the tokenizer options above are then ignored; --seed seeds the new generator)')
    ap.add_argument('--n-train', type=int, default=None, help='training shapes per category (data default: 40); with '
                    '--tokenizer-from the tokenizer keeps its own training, only the generator sees the extra shapes')
    ap.add_argument('--generator-init', default=None, help='with --tokenizer-from: start the generator from this '
                    'checkpoint (a warm restart; its own width, --generator-width is ignored)')
    ap.add_argument('--generator-lr', type=float, default=None, help="with --tokenizer-from: the generator's peak "
                    "learning rate (default: the nano preset's 2e-3)")
    ap.add_argument('--tokenizer-init', default=None, help='a pair folder: continue its tokenizer for --tokenizer-steps '
                    'on --n-train shapes per category, in its frame, and save only the tokenizer to --out (then '
                    '--tokenizer-from OUT --generator-init trains its generator)')
    ap.add_argument('--tokenizer-lr', type=float, default=None, help="with --tokenizer-init: the peak learning rate "
                    "(default: a quarter of the preset's 2e-3)")
    ap.add_argument('--generator-loss', default='scale', choices=LOSS_WEIGHTINGS, help="how the generator's loss "
                    "averages its scales: 'scale' (each scale weighs the same, the default), 'token' (each token: the "
                    "finest scale dominates) or 'mixed' (the average of the two weightings)")
    ap.add_argument('--generator-ckpt', default=None, help="with --tokenizer-from: keep a training checkpoint of the "
                    "generator here (every --generator-ckpt-every steps and on Ctrl-C / SIGTERM); the same command again "
                    "resumes it exactly, so a long run can span several sittings")
    ap.add_argument('--generator-ckpt-every', type=int, default=100, help='steps between generator checkpoints')
    ap.add_argument('--generator-corrective', type=float, default=0.0, help="with --tokenizer-from: the share of each "
                    "batch's rows trained on one scale drawn by the generator itself and corrective finer tokens "
                    "(generate.corrective_loss; 0 = plain teacher forcing)")
    ap.add_argument('--generator-mask-finest', action='store_true', help="with --tokenizer-from: a generator whose finest "
                    "scale also sees the codes drawn there so far (TransformerConfig.mask_finest; sampled in passes, "
                    "sample(..., finest_passes=P))")
    a = ap.parse_args()
    if a.generator_init and not a.tokenizer_from: ap.error('--generator-init needs --tokenizer-from')
    if a.generator_ckpt and not a.tokenizer_from: ap.error('--generator-ckpt needs --tokenizer-from')
    if a.generator_ckpt_every < 1: ap.error('--generator-ckpt-every must be >= 1')
    if not 0 <= a.generator_corrective <= 1: ap.error('--generator-corrective must be in [0, 1]')
    if a.generator_corrective and not a.tokenizer_from: ap.error('--generator-corrective needs --tokenizer-from')
    if a.generator_mask_finest and not a.tokenizer_from: ap.error('--generator-mask-finest needs --tokenizer-from')
    if a.tokenizer_init and a.tokenizer_from: ap.error('--tokenizer-init and --tokenizer-from exclude each other')
    if a.tokenizer_lr is not None and not a.tokenizer_init: ap.error('--tokenizer-lr needs --tokenizer-init')
    if a.tokenizer_init:
        rec = continue_tokenizer(Path(a.tokenizer_init), a.tokenizer_steps, Path(a.out), a.device, n_train=a.n_train,
                                 seed=a.seed, lr=a.tokenizer_lr, val_every=a.val_every)[1]
        print(json.dumps(rec, indent=2, default=str)); sys.exit()
    gen_cfg = None if a.generator_width is None else TransformerConfig.preset('nano', d_model=a.generator_width)
    if a.tokenizer_from:
        try:
            rec = retrain_generator(Path(a.tokenizer_from), a.generator_steps, Path(a.out), a.device, gen_cfg=gen_cfg,
                                    n_train=a.n_train, seed=a.seed, init=a.generator_init, lr=a.generator_lr,
                                    loss_weighting=a.generator_loss, ckpt_path=a.generator_ckpt,
                                    ckpt_every=a.generator_ckpt_every, corrective=a.generator_corrective,
                                    mask_finest=a.generator_mask_finest)[3]
        except TrainingInterrupted as e:              # fit saved the step boundary (with --generator-ckpt) and says where
            print(e, file=sys.stderr); sys.exit(130)
        print(json.dumps(rec, indent=2, default=str)); sys.exit()
    over = {} if a.scales is None else dict(scales=tuple(int(s) for s in a.scales.split(',')))
    if a.sibling_slots: over['sibling_slots'] = True
    if a.fixed_norm: over['norm_affine'] = False
    tok_cfg = TokenizerConfig.preset('nano', **over)
    print(json.dumps(train_pair(a.tokenizer_steps, a.generator_steps, Path(a.out), a.device, a.seed or 0, tok_cfg=tok_cfg,
                                gen_cfg=gen_cfg, val_every=a.val_every, n_train=a.n_train),
                     indent=2, default=str))
