"""Evidence, not a test: tlcli transfers from a local file of a timm model's own state dict, family by family.

For each family: build the model random-init (with its classifier, like published weights), save its
state_dict() as .safetensors, then tlcli's create_backbone(name, file, in_chans=3, img_size=...) at the
model's own size and at 64 px (create_backbone ends with a one-image dry forward at that size). One row per
(family, size): OK, or tlcli's one-line error. A row marked UNEXPECTED is a loader bug.

    OMP_NUM_THREADS=1 nice python -m benchmarks.weights_families [--small 64] [model ...]
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import timm  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from benchmarks.common import machine, table  # noqa: E402
from tl_cli.errors import TlcliError  # noqa: E402
from tl_cli.transfer.weights import create_backbone  # noqa: E402

# (family, smallest usual variant); the note says why the family is here
FAMILIES = [
    ("resnet", "resnet18"),
    ("efficientnet", "efficientnet_b0"),
    ("mobilenetv3", "mobilenetv3_small_100"),
    ("mobilenetv4", "mobilenetv4_conv_small"),
    ("convnext", "convnext_atto"),
    ("regnet", "regnetx_002"),
    ("densenet", "densenet121"),
    ("vgg", "vgg11"),
    ("dla", "dla34"),
    ("hrnet", "hrnet_w18_small"),
    ("cspnet", "cs3darknet_s"),
    ("ghostnet", "ghostnet_100"),
    ("rexnet", "rexnet_100"),
    ("repvgg", "repvgg_a0"),
    ("inception (min size)", "inception_v3"),
    ("caformer (MLP head)", "caformer_s18"),
    ("convformer (MLP head)", "convformer_s18"),
    ("poolformer", "poolformer_s12"),
    ("mobilevit", "mobilevit_xxs"),
    ("efficientformer (fixed)", "efficientformer_l1"),
    ("edgenext", "edgenext_xx_small"),
    ("levit (fixed)", "levit_128s"),
    ("mixer (fixed)", "mixer_s16_224"),
    ("vit (pos embed)", "vit_tiny_patch16_224"),
    ("deit", "deit_tiny_patch16_224"),
    ("swin", "swin_tiny_patch4_window7_224"),
    ("maxvit", "maxvit_nano_rw_256"),
    ("coatnet", "coatnet_nano_rw_224"),
    ("eva", "eva02_tiny_patch14_224"),
    ("beit", "beit_base_patch16_224"),
    ("xcit", "xcit_nano_12_p16_224"),
    ("pit", "pit_ti_224"),
    ("tnt", "tnt_s_patch16_224"),
    ("cait", "cait_xxs24_224"),
    ("gcvit", "gcvit_xxtiny"),
    ("efficientvit (BN head)", "efficientvit_m0"),
    ("fastvit", "fastvit_t8"),
    ("tiny_vit", "tiny_vit_5m_224"),
    ("pvt_v2", "pvt_v2_b0"),
    ("mambaout", "mambaout_femto"),
    ("hgnetv2", "hgnetv2_b0"),
    ("resmlp", "resmlp_12_224"),
    ("swinv2", "swinv2_tiny_window8_256"),
    ("crossvit", "crossvit_tiny_240"),
    ("convit", "convit_tiny"),
    ("davit", "davit_tiny"),
    ("focalnet", "focalnet_tiny_srf"),
    ("hiera", "hiera_tiny_224"),
    ("mvitv2", "mvitv2_tiny"),
    ("twins", "twins_svt_small"),
    ("nest", "nest_tiny"),
    ("volo", "volo_d1_224"),
    ("coat", "coat_lite_tiny"),
    ("efficientformerv2", "efficientformerv2_s0"),
    ("deit3", "deit3_small_patch16_224"),
    ("dinov2 (patch 14)", "vit_small_patch14_dinov2"),
    ("xception", "xception41"),
    ("dpn", "dpn68"),
    ("vovnet", "ese_vovnet19b_dw"),
    ("resnest", "resnest14d"),
    ("nfnet", "nf_resnet26"),
    ("inception_v4 (min size)", "inception_v4"),
    ("tresnet", "tresnet_m"),
    ("sequencer", "sequencer2d_s"),
    ("starnet", "starnet_s1"),
]


def check(name: str, path: str, img_size: int) -> str:
    """OK, or the one-line error create_backbone gives."""
    try:
        model, _ = create_backbone(name, path, in_chans=3, img_size=img_size)
        del model
        return "OK"
    except TlcliError as ex:
        return f"error: {ex}"
    except Exception as ex:  # noqa: BLE001 - what the loader should have turned into one line
        first = (str(ex).strip().splitlines() or [""])[0][:160]
        return f"UNEXPECTED {type(ex).__name__}: {first}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", help="timm model names (default: one per family)")
    parser.add_argument("--small", type=int, default=64, help="the second size tried, in px")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    families = [(m, m) for m in args.models] or FAMILIES
    rows, unexpected = [], 0
    with tempfile.TemporaryDirectory() as tmp:
        for family, name in families:
            torch.manual_seed(0)
            source = timm.create_model(name)  # random init, 1000-class classifier: what a published file holds
            native = int(source.pretrained_cfg["input_size"][-1])
            path = str(Path(tmp) / f"{name}.safetensors")
            save_file({k: v.contiguous().clone() for k, v in source.state_dict().items()}, path)  # no shared
            del source
            for size in dict.fromkeys((native, args.small)):
                start = time.perf_counter()
                result = check(name, path, size)
                unexpected += result.startswith("UNEXPECTED")
                rows.append([family, name, size, result, f"{time.perf_counter() - start:.1f}"])
                print(" | ".join(str(c) for c in rows[-1]), file=sys.stderr, flush=True)
            os.remove(path)
            gc.collect()
    print(f"timm {timm.__version__}; {machine()}")
    print(table(["family", "model", "img_size", "create_backbone", "s"], rows))
    return 1 if unexpected else 0


if __name__ == "__main__":
    sys.exit(main())
