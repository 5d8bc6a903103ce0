"""Score matching + rectifier as released before the generation-move change (the rectifier told the S_for
grid's move at the sampled level), for the seed comparison in runs/stepcond/README.md.
    python runs/stepcond/sm_oldstep.py OUT LR SEED"""
import json, sys
from pathlib import Path

import hifiedit.train.edit as E


def old_step(task, gen):
    c = task.config
    idx = E.torch.randint(len(task.images), (c.batch_size,), generator=gen)
    inside = (task.levels[task.kept] >= c.t_edit).nonzero().flatten()
    pos = inside[E.torch.randint(len(inside), (c.batch_size,), generator=gen)]
    x, t = task.states[idx, pos], task.levels[task.kept[pos]]
    step = t - task.levels[task.kept[pos] - 1]
    eps = task.eps(x, t, task.x0_code(task.images[idx]), step)
    loss = task.loss(E.predict_x0(x, eps, task.alpha(t)), idx)
    loss.backward()
    return loss.item()


E.STEPS["score-matching"] = old_step
cfg = E.EditTrainConfig(src="light skin tone", tgt="dark skin tone", method="score-matching",
                        rectifier="default", images=64, t0=400, s_for=40, s_train=6, iters=200,
                        w_dir=1.0, w_l1=0.3, t_edit=133, lr=float(sys.argv[2]), seed=int(sys.argv[3]),
                        threads=2)
print(json.dumps(E.train_edit(cfg, Path(sys.argv[1]))))
