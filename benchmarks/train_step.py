"""Cost of one prompt-training iteration with a full-size CLIP ViT-B/16 (random weights, OpenAI architecture).

Times one optimiser step at batch 16 (224×224 crops) for the classification task (MCL, no CAM) and for the
segmentation task (CAL through Softmax-GradCAM, second order), on whatever device is available, in float32 (and
with AMP on CUDA). Baseline: the classification step, so the segmentation step prints as a ratio to it.

    python benchmarks/train_step.py [--device cpu|cuda] [--repeats 2] [--batch 16]
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--amp", action="store_true", help="autocast fp16 (CUDA only)")
    args = parser.parse_args()

    import open_clip

    from tag2mask.cam import GradCAMClip
    from tag2mask.config import load_config
    from tag2mask.models.prompts import PromptLearner
    from tag2mask.prompt_training.losses import cam_activation_loss, multilabel_contrastive_loss

    config = load_config("voc")
    torch.manual_seed(0)
    clip = open_clip.create_model("ViT-B-16-quickgelu", pretrained=None).float().eval().to(args.device)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch, 3, 224, 224, generator=g).to(args.device)
    labels = torch.zeros(args.batch, 20)
    for n in range(args.batch):
        labels[n, torch.randperm(20, generator=g)[: 1 + n % 3]] = 1
    labels = labels.to(args.device)
    label_map = torch.randint(0, 21, (args.batch, 224, 224), generator=g).to(args.device)

    def step(task: str) -> float:
        p = getattr(config.prompts, task)
        bg = config.data.bg_names if p.bg_prompts == "named" else [""] * len(config.data.bg_names)
        learner = PromptLearner(clip, config.data.fg_names, bg, n_ctx=p.n_ctx, class_specific=p.class_specific,
                                name_position=p.name_position, ctx_std=p.ctx_std, seed=p.seed).to(args.device)
        model = GradCAMClip(clip, learner)
        opt = torch.optim.SGD([learner.ctx], lr=1e-3, momentum=0.9, weight_decay=5e-4)
        times = []
        for _ in range(args.repeats + 1):
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            opt.zero_grad()
            with torch.autocast("cuda", dtype=torch.float16, enabled=args.amp and args.device.startswith("cuda")):
                out = model(images, labels, create_graph=task == "seg", compute_cam=task == "seg")
            if task == "cls":
                loss = multilabel_contrastive_loss(out.fg_logits.float(), labels)
            else:
                fg, bgl = cam_activation_loss(out.cam.float(), labels, label_map)
                loss = fg + bgl
            loss.backward()
            opt.step()
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        return statistics.median(times[1:])  # the first call warms up

    cls_s, seg_s = step("cls"), step("seg")
    print(f"tag2mask prompt-training step, ViT-B/16 (random weights), batch {args.batch} at 224x224, "
          f"device {args.device}{' + AMP' if args.amp else ''}, torch {torch.__version__}, "
          f"{platform.processor() or platform.machine()} x{torch.get_num_threads()} threads, {datetime.date.today()}")
    print(f"classification task (MCL, no CAM):              {cls_s:8.2f} s/iteration  (baseline 1.00x)")
    print(f"segmentation task (CAL through Softmax-GradCAM): {seg_s:8.2f} s/iteration  ({seg_s / cls_s:.2f}x)")


if __name__ == "__main__":
    main()
