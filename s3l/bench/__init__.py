"""Pretraining throughput: this project (Lightning) against a plain PyTorch loop, and the upstream data
pipeline against the fast cached one and the on-device augmentation.

    python -m s3l.bench --archs resnet18,resnet50 --resolutions 56,112 --batch 32 --workers 2

Sections (`--sections`):
- data: images/s that a DataLoader delivers as ready two-view batches on the training device (no model),
  for each pipeline of `--pipelines`: `original` (full JPEG decode + the PIL views of `--augmentation`,
  default `mocov2`, the upstream MoCo v2 augmentation), `cache` (the resized-image cache, same views),
  `fast` (the cache + `fast_view_transform` + `collate_normalized`) and `device` (the cache; workers draw
  the parameters, `realize_views` augments whole batches on the device, timed with the loader).
- train: MoCo v2 pretraining images/s of the project's MoCoV2 under the project's Trainer (built by
  `s3l.stages.build`), against a plain loop (upstream `main_moco_pretraining.py` style: SGD,
  `loss.backward()`, `optimizer.step()`, no Lightning) over the same model, optimizer, batch and DataLoader
  (original pipeline); the project also runs with each other pipeline but `cache`. With `--methods`, each
  other method (simclr, byol, simsiam) runs through the project on the same pipelines, in a table of its
  own with its ratio to MoCo v2. Each run is a fresh process (unless --no-isolate), so peak memory (RSS on
  CPU, CUDA max allocated on GPU) is its own.
- epoch: one epoch of the train split end to end: plain loop + original pipeline against project + fast.
- e2e: whole short runs (`--e2e-epochs`, default 20) as fresh processes, timed whole: `train.py stage=pretrain`
  with its defaults against `python -m s3l.bench.plain`, a plain script with persistent workers on the same
  cache, views, model and kNN epochs (first architecture and resolution).
- stream: LitData shards (dataset.format=litdata, JPEG and raw) of the train split: build images/s and size
  against the cache's, and the streamed two-view read against the cache (fast) and the original files (data
  section); needs LitData (`pip install -e '.[stream]'`), skipped with a line without it.

An image is one dataset image delivered as two augmented views (query and key). Rates are the median over
`--windows` windows of `--steps` batches, after `--warmup` batches (at least the 2 x workers batches that
the DataLoader prefetches, or the first windows look faster than the steady state). Timed runs draw
`warmup + windows x steps` shuffled batches from the train split, repeating it as needed.
Writes `<out>/bench.json` and `<out>/bench.md` and prints the tables.

Modules: `cli` (arguments, caches, main), `data` (pipelines, loaders, the data section), `training` (the two
training loops, the train and epoch sections), `plain` (the plain loop's step and script), `endtoend` (the e2e
section), `stream` (the stream section), `report` (bench.md); `gpu` (`python -m s3l.bench.gpu`, the prepared one-GPU benchmark).
"""
