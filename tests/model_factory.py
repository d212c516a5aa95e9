"""Tiny random SpeechBrain models in the *official* pretrained layout, for tests.

Each builder writes a directory exactly like the published models (same ``hyperparams.yaml``
keys and classes, ``pretrained_path`` naming the hub repo, the checkpoint files SpeechBrain's
Pretrainer loads, ``label_encoder.txt``), only with tiny channel counts and random weights drawn
from a fixed torch seed. The service loads them through the same code path as the real models.
Building one takes well under a second once speechbrain is imported.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from tests.paths import FIXTURES_DIR

VOXLINGUA_FIXTURE = FIXTURES_DIR / "voxlingua107"

_SPEAKER_HPARAMS = """\
# ############################################################################
# Model: ECAPA big for Speaker verification  (TINY RANDOM TEST COPY)
# ############################################################################

# Feature parameters
n_mels: 80

# Pretrain folder (HuggingFace)
pretrained_path: {hub_name}

# Output parameters
out_n_neurons: {out_neurons}

# Model params
compute_features: !new:speechbrain.lobes.features.Fbank
    n_mels: !ref <n_mels>

mean_var_norm: !new:speechbrain.processing.features.InputNormalization
    norm_type: sentence
    std_norm: False

embedding_model: !new:speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN
    input_size: !ref <n_mels>
    channels: [16, 16, 16, 16, 48]
    kernel_sizes: [5, 3, 3, 3, 1]
    dilations: [1, 2, 3, 4, 1]
    attention_channels: 8
    lin_neurons: {lin_neurons}

classifier: !new:speechbrain.lobes.models.ECAPA_TDNN.Classifier
    input_size: {lin_neurons}
    out_neurons: !ref <out_n_neurons>

mean_var_norm_emb: !new:speechbrain.processing.features.InputNormalization
    norm_type: global
    std_norm: False

modules:
    compute_features: !ref <compute_features>
    mean_var_norm: !ref <mean_var_norm>
    embedding_model: !ref <embedding_model>
    mean_var_norm_emb: !ref <mean_var_norm_emb>
    classifier: !ref <classifier>

label_encoder: !new:speechbrain.dataio.encoder.CategoricalEncoder


pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer
    loadables:
        embedding_model: !ref <embedding_model>
        mean_var_norm_emb: !ref <mean_var_norm_emb>
        classifier: !ref <classifier>
        label_encoder: !ref <label_encoder>
    paths:
        embedding_model: !ref <pretrained_path>/embedding_model.ckpt
        mean_var_norm_emb: !ref <pretrained_path>/mean_var_norm_emb.ckpt
        classifier: !ref <pretrained_path>/classifier.ckpt
        label_encoder: !ref <pretrained_path>/label_encoder.txt
"""

_LANGID_HPARAMS = """\
pretrained_path: {hub_name}


# Feature parameters
n_mels: 60
left_frames: 0
right_frames: 0
deltas: false

# Number of speakers
out_n_neurons: 107

# Functions
compute_features: !new:speechbrain.lobes.features.Fbank
  n_mels: 60
  left_frames: 0
  right_frames: 0
  deltas: false

embedding_model: !new:speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN
  input_size: 60
  channels: {channels}
  kernel_sizes: [5, 3, 3, 3, 1]
  dilations: [1, 2, 3, 4, 1]
  attention_channels: {attention_channels}
  lin_neurons: {lin_neurons}


classifier: !new:speechbrain.lobes.models.Xvector.Classifier
  input_shape: [null, null, {lin_neurons}]
  activation: !name:torch.nn.LeakyReLU
  lin_blocks: 1
  lin_neurons: {classifier_neurons}
  out_neurons: !ref <out_n_neurons>


mean_var_norm: !new:speechbrain.processing.features.InputNormalization
  norm_type: sentence
  std_norm: false

modules:
    compute_features: !ref <compute_features>
    mean_var_norm: !ref <mean_var_norm>
    embedding_model: !ref <embedding_model>
    classifier: !ref <classifier>

label_encoder: !new:speechbrain.dataio.encoder.CategoricalEncoder

pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer
    loadables:
        embedding_model: !ref <embedding_model>
        classifier: !ref <classifier>
        label_encoder: !ref <label_encoder>
    paths:
        embedding_model: !ref <pretrained_path>/embedding_model.ckpt
        classifier: !ref <pretrained_path>/classifier.ckpt
        label_encoder: !ref <pretrained_path>/label_encoder.txt
"""


def shared_model_cache(model_dirs: dict[str, Path]) -> Path:
    """The model cache for a session's tiny models (beside them): every test that loads them,
    in-process or in a server subprocess, shares it, so each ONNX export is built once."""
    return Path(model_dirs["voxceleb"]).parent / "model-cache"


def load_tiny(model_dirs: dict[str, Path], backend: str) -> Any:
    """A ``ModelRegistry`` of the tiny models on ``backend``, exports in the shared cache."""
    from service.core.settings import Settings
    from service.pipeline.registry import ModelRegistry

    inference = Settings(_env_file=None, backend=backend).inference()  # type: ignore[arg-type]
    registry = ModelRegistry.load(
        {role: str(path) for role, path in model_dirs.items()},
        cache_dir=shared_model_cache(model_dirs),
        device="cpu",
        inference=inference,
    )
    assert registry.all_loaded, registry.statuses
    return registry


#: Tiny speaker model: number of training "speakers" its classifier head knows.
SPEAKER_OUT_NEURONS = 10


def _instantiate(hparams_text: str, seed: int) -> dict:
    """Build the modules the YAML declares, with weights drawn from ``seed``."""
    import torch
    from hyperpyyaml import load_hyperpyyaml

    with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG state alone
        torch.manual_seed(seed)
        return load_hyperpyyaml(hparams_text)


def _randomise_batchnorm(module, generator) -> None:
    """Give every BatchNorm non-trivial running statistics, as a trained model has.

    Freshly initialised BatchNorms (mean 0, var 1) pass activations through unchanged in eval
    mode; drawing the statistics from the seed makes different seeds differ everywhere.
    """
    import torch

    for child in module.modules():
        if isinstance(child, torch.nn.modules.batchnorm._BatchNorm) and child.track_running_stats:
            n = child.running_mean.shape[0]
            child.running_mean.copy_(0.1 * torch.randn(n, generator=generator))
            child.running_var.copy_(0.5 + torch.rand(n, generator=generator))


def _calibration_batch():
    """Deterministic speech-like and noise clips (2 s, 16 kHz) for BatchNorm statistics."""
    import numpy as np
    import torch

    from tests.audio_factory import synth_voice

    rng = np.random.default_rng(1234)
    clips = [
        synth_voice(2.0, seed=100 + i, f0=f0)
        for i, f0 in enumerate((85.0, 100.0, 120.0, 140.0, 165.0, 190.0, 220.0, 260.0))
    ]
    for colour in (0.0, 0.5, 0.9, 0.98):  # white to strongly low-passed noise
        noise = rng.standard_normal(32_000)
        for n in range(1, noise.shape[0]):
            noise[n] += colour * noise[n - 1]
        clips.append((0.3 * noise / np.abs(noise).max()).astype(np.float32))
    return torch.from_numpy(np.stack(clips))


def _calibrate_batchnorm(hparams: dict):
    """Set every BatchNorm's running statistics from real forward passes, as training does.

    With random weights and default statistics, every embedding shares one large common
    component (cosine ~0.99 between any two inputs). Statistics measured on varied audio centre
    the activations, so different voices get clearly different embeddings, like a trained model.
    """
    import torch

    model = hparams["embedding_model"]
    batch_norms = [
        m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
    ]
    wavs = _calibration_batch()
    lengths = torch.ones(wavs.shape[0])
    with torch.no_grad():
        feats = hparams["compute_features"](wavs)
        feats = hparams["mean_var_norm"](feats, lengths)
        for m in batch_norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration pass
        model.train()
        model(feats, lengths)
        model.eval()
        for m in batch_norms:
            m.momentum = 0.1
        embeddings = model(feats, lengths)
    return embeddings.squeeze(1)


def build_speaker_model(
    target_dir: Path,
    *,
    hub_name: str = "speechbrain/spkrec-ecapa-voxceleb",
    seed: int = 0,
    lin_neurons: int = 192,
) -> Path:
    """Write a tiny random ECAPA speaker encoder in the spkrec-ecapa-voxceleb layout."""
    import torch

    target_dir = Path(target_dir)
    target_dir.mkdir(parents=True, exist_ok=True)
    text = _SPEAKER_HPARAMS.format(
        hub_name=hub_name, lin_neurons=lin_neurons, out_neurons=SPEAKER_OUT_NEURONS
    )
    hparams = _instantiate(text, seed)
    generator = torch.Generator().manual_seed(seed + 1)
    embeddings = _calibrate_batchnorm(hparams)
    _randomise_batchnorm(hparams["classifier"], generator)

    (target_dir / "hyperparams.yaml").write_text(text, encoding="utf-8")
    torch.save(hparams["embedding_model"].state_dict(), target_dir / "embedding_model.ckpt")
    torch.save(hparams["classifier"].state_dict(), target_dir / "classifier.ckpt")

    # InputNormalization's own saver: {"count", "glob_mean", "glob_std"}.
    norm = hparams["mean_var_norm_emb"]
    norm.glob_mean = embeddings.mean(dim=0)
    norm.glob_std = torch.ones(lin_neurons)
    norm.count = 1000
    norm._save(target_dir / "mean_var_norm_emb.ckpt")

    # CategoricalEncoder's own saver: "'id10001' => 0" lines + the starting_index extra.
    label_encoder = hparams["label_encoder"]
    label_encoder.update_from_iterable(
        [f"id{10001 + i}" for i in range(SPEAKER_OUT_NEURONS)], sequence_input=False
    )
    label_encoder.save(target_dir / "label_encoder.txt")
    return target_dir


#: (channels, attention_channels, lin_neurons, classifier lin_neurons) of the tiny test model and
#: of the published lang-id-voxlingua107-ecapa (same architecture, same compute as the real one).
_LANGID_TINY = ("[16, 16, 16, 16, 48]", 8, 32, 32)
_LANGID_FULL = ("[1024, 1024, 1024, 1024, 3072]", 128, 256, 512)


def build_langid_model(
    target_dir: Path, *, seed: int = 0, favour_language: str | None = None, full_size: bool = False
) -> Path:
    """Write a tiny random VoxLingua107 language-ID model (the real 107 labels).

    ``favour_language="zh"`` sets the output layer so that language wins on any input with a
    posterior of about 0.99, while every other language keeps a small, input-dependent share.
    ``full_size=True`` uses the official model's dimensions instead (random weights, the real
    model's compute cost: for throughput benchmarks; slow to build, never used by tests).
    """
    import torch

    target_dir = Path(target_dir)
    target_dir.mkdir(parents=True, exist_ok=True)
    channels, attention, lin, classifier_lin = _LANGID_FULL if full_size else _LANGID_TINY
    text = _LANGID_HPARAMS.format(
        hub_name="speechbrain/lang-id-voxlingua107-ecapa",
        channels=channels,
        attention_channels=attention,
        lin_neurons=lin,
        classifier_neurons=classifier_lin,
    )
    hparams = _instantiate(text, seed)
    generator = torch.Generator().manual_seed(seed + 1)
    _calibrate_batchnorm(hparams)
    classifier = hparams["classifier"]
    _randomise_batchnorm(classifier, generator)

    labels_file = VOXLINGUA_FIXTURE / "label_encoder.txt"
    shutil.copyfile(labels_file, target_dir / "label_encoder.txt")

    if favour_language is not None:
        index = _label_index(labels_file, favour_language)
        out = classifier.out.w
        with torch.no_grad():
            out.weight.mul_(0.05)
            out.bias.zero_()
            out.bias[index] = 10.0

    (target_dir / "hyperparams.yaml").write_text(text, encoding="utf-8")
    torch.save(hparams["embedding_model"].state_dict(), target_dir / "embedding_model.ckpt")
    torch.save(classifier.state_dict(), target_dir / "classifier.ckpt")
    return target_dir


def _label_index(labels_file: Path, language: str) -> int:
    from speechbrain.dataio.encoder import CategoricalEncoder

    encoder = CategoricalEncoder()
    encoder.load(labels_file)
    for index, label in encoder.ind2lab.items():
        if str(label).split(":", 1)[0].strip() == language:
            return int(index)
    raise ValueError(f"language {language!r} is not in {labels_file}")
