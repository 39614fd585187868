"""Differentiable body models for keypoint fitting: Anny (default, ships with its pip package) and SMPL + MANO
through `smplx` (licensed files, taken from configured paths only).

Both backends expose the same small interface, so `fit.py` is backend-agnostic:
  body_points(root_R (B,3,3), body_R (B,21,3,3))   -> (B, 23, 3) keypoints in FIT_KEYPOINTS order, root at 0
  hand_points(side, G (N,3,3), finger_R (N,15,3,3)) -> (N, 21, 3) in mediapipe's hand order, wrist at 0
  hinges: [(body joint index, rest flexion axis)] for knees/elbows (joint-limit prior)
Rotations are local rotations of the theta joints, expressed in world-aligned axes at rest (Anny 'local-ref';
SMPL/MANO rotations already are), so priors and the label mean the same thing for both backends.
"""

from __future__ import annotations

import functools
import pickle
from pathlib import Path

import numpy as np
import torch

from dimo.labelling import label_format as lf
from dimo.synthesis.body import load_model as load_anny  # one cached Anny for synthesis and labelling


class AnnyBackend:
    """Anny's skeleton with its own batched forward kinematics (Anny's generic FK is ~1 s per fwd+bwd of 33
    frames on this CPU; this specialised one with torch.matmul per depth level is ~100x faster). Keypoints
    use the exact linearity of LBS: a regressed keypoint sum_v w_v sum_b a_vb T_b v_v = sum_b T_b p_b, with the
    (K, bones, 4) basis p precomputed once, so no vertex is skinned while fitting."""

    name = "anny"
    forward_axis = (0.0, -1.0, 0.0)  # Anny faces -Y, Z up, left = +X
    hand_anchors = (0, 5, 9, 17)  # mediapipe hand landmarks matching the anchor points body_points appends

    def __init__(self, phenotype: dict[str, float] | None = None, dtype=torch.float32):
        import anny

        model = load_anny()
        self.model = model
        self.dtype = dtype
        self.labels = list(model.bone_labels)
        self.parents = [int(p) for p in model.bone_parents]
        self.index = {b: i for i, b in enumerate(self.labels)}
        self.phenotype = {k: float(v) for k, v in (phenotype or {}).items()}
        with torch.no_grad():
            out = model(phenotype_kwargs=self.phenotype or None)
        rest_poses = out["rest_bone_poses"][0].double()
        R, h = rest_poses[:, :3, :3], rest_poses[:, :3, 3]
        U = model.reference_bone_orientations.double()
        A = U @ R.transpose(-1, -2)
        A[0] = torch.eye(3, dtype=A.dtype)
        p = torch.tensor([max(q, 0) for q in self.parents])
        q_off = (A[p] @ (h - h[p])[..., None])[..., 0]
        self.U = U.to(dtype)
        self.Rrest, self.hrest = R.to(dtype), h.to(dtype)
        self.K_t = (U[p].transpose(-1, -2) @ q_off[..., None])[..., 0].to(dtype)  # constant child offsets
        self.body_idx = torch.tensor([self.index[b] for b in lf.ANNY_BODY_BONES])

        # Keypoint bases: Anny's COCO regressor (23 = FIT_KEYPOINTS order) folded through LBS.
        reg = anny.KeypointsRegressor.coco(model)
        assert tuple(reg.labels) == lf.FIT_KEYPOINTS, reg.labels
        rest_v = out["rest_vertices"][0].double()
        # Fingertips: the rest vertex of each distal finger bone farthest from the finger's base, rigidly attached.
        bw, bi = model.vertex_bone_weights, model.vertex_bone_indices
        dominant = bi[torch.arange(len(bi)), bw.argmax(1)]
        tips = {}
        for side in ("L", "R"):
            for f in range(1, 6):
                b = self.index[f"finger{f}-3.{side}"]
                cand = torch.nonzero(dominant == b)[:, 0]
                axis = torch.nn.functional.normalize(h[b] - h[self.index[f"finger{f}-2.{side}"]], dim=0)
                tips[(side, f)] = (b, rest_v[cand[((rest_v[cand] - h[b]) @ axis).argmax()]])
        # Reduced chains: body = root + the 21 theta_body bones; hands = wrist + the 15 finger bones.
        Wd = reg.regression_weights.double()
        used = torch.nonzero(Wd.abs().sum(0) > 0)[:, 0]
        vw, vi = model.vertex_bone_weights[used].double(), model.vertex_bone_indices[used]
        body_terms = []
        for k in range(Wd.shape[0]):
            nz = torch.nonzero(Wd[k, used] > 0)[:, 0]
            ww = Wd[k, used[nz], None] * vw[nz]  # (M, 9) keypoint weight x skinning weight
            body_terms.append((vi[nz].reshape(-1), rest_v[used[nz]].repeat_interleave(vw.shape[1], 0),
                               ww.reshape(-1)))
        # Hand anchors after the 23 keypoints: wrist, index/middle/pinky knuckles per side (left, right). With the
        # hand detector's landmarks they pin the wrist rotation (pose landmarks alone barely observe it).
        for s in ("L", "R"):
            for b in (f"wrist.{s}", f"finger2-1.{s}", f"finger3-1.{s}", f"finger5-1.{s}"):
                j = self.index[b]
                body_terms.append((torch.tensor([j]), h[j][None], torch.ones(1, dtype=torch.float64)))
        self.body_red = self._reduce(0, [self.index[b] for b in lf.ANNY_BODY_BONES], body_terms)
        self.hand_red = {}
        for s in ("L", "R"):
            one = torch.ones(1, dtype=torch.float64)
            pts = [(torch.tensor([self.index[f"wrist.{s}"]]), h[self.index[f"wrist.{s}"]][None], one)]
            for f in range(1, 6):
                for k in (1, 2, 3):
                    j = self.index[f"finger{f}-{k}.{s}"]
                    pts.append((torch.tensor([j]), h[j][None], one))
                j, v = tips[(s, f)]
                pts.append((torch.tensor([j]), v[None], one))
            free = [self.index[f"{b}.{s}"] for b in lf.ANNY_HAND_BONES]
            self.hand_red[s] = self._reduce(self.index[f"wrist.{s}"], free, pts)
        self.hinges = self._hinges()

    # ------------------------------------------------------------------ kinematics
    def _rest_world(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Rest world rotations/heads of every bone through the 'local-ref' chain (float64)."""
        U = self.U.double()
        Kt = self.K_t.double()
        nb = len(self.labels)
        W_R, W_t = [None] * nb, [None] * nb
        W_R[0], W_t[0] = torch.eye(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
        for c in range(1, nb):  # Anny lists parents before children
            p = self.parents[c]
            W_R[c] = W_R[p] @ U[p].T @ U[c]
            W_t[c] = W_t[p] + W_R[p] @ Kt[c]
        return torch.stack(W_R), torch.stack(W_t)

    def _reduce(self, root: int, free: list[int], points: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]):
        """Collapse the skeleton onto `root` + `free` bones: a bone whose rotation is not fitted is rigidly
        attached to its nearest fitted ancestor, so the FK runs on ~22 nodes instead of ~100 bones.
        points: per output point, (bones (M,), rest-world positions (M, 3), weights (M,)) -> basis Q (K, nodes, 4)."""
        WR, Wt = self._rest_world()
        U = self.U.double()
        Kt = self.K_t.double()
        nodes = [root] + list(free)
        node_of = {}
        for j in range(len(self.labels)):  # nearest node on the path to `root` (None: outside the subtree)
            b = j
            while b >= 0 and b not in nodes:
                b = self.parents[b] if b != root else -1
            node_of[j] = b if b >= 0 else None
        # reduced parent of each free node and its depth, then levels with parents in the previous level
        rparent = {c: node_of[self.parents[c]] for c in free}
        def d(c):
            return 0 if c == root else 1 + d(rparent[c])
        by_depth: dict[int, list[int]] = {}
        for c in free:
            by_depth.setdefault(d(c), []).append(c)
        levels, prev = [], [root]
        A = {}
        bvec = {}
        for k in sorted(by_depth):
            level = by_depth[k]
            for c in level:
                a_, p = rparent[c], self.parents[c]
                M_R = WR[a_].T @ WR[p]
                M_t = WR[a_].T @ (Wt[p] - Wt[a_])
                A[c] = M_R @ U[p].T
                bvec[c] = M_t + M_R @ Kt[c]  # K_t already holds U_p^T q_c
            local = torch.tensor([prev.index(rparent[c]) for c in level])
            idx = torch.tensor(level)
            levels.append((idx, local, torch.stack([A[c] for c in level]).to(self.dtype),
                           torch.stack([bvec[c] for c in level]).to(self.dtype), U[idx].to(self.dtype)))
            prev = level
        flat = [root] + [c for k in sorted(by_depth) for c in by_depth[k]]
        pos = {n: i for i, n in enumerate(flat)}
        Q = torch.zeros(len(points), len(flat), 4, dtype=torch.float64)
        node_idx = torch.tensor([pos[node_of[j]] if node_of[j] is not None else -1 for j in range(len(self.labels))])
        Rr, hr = self.Rrest.double(), self.hrest.double()
        for k, (j, v, w) in enumerate(points):
            n = node_idx[j]
            j, v, w = j[n >= 0], v[n >= 0].double(), w[n >= 0].double()
            n = n[n >= 0]
            # T_j v = W_n (W_n,rest^-1 W_j,rest) P_j^-1 v, with P_j^-1 v = R_j^T (v - h_j) in bone-local coords.
            local = (Rr[j].transpose(-1, -2) @ (v - hr[j])[..., None])[..., 0]
            in_j = (WR[j] @ local[..., None])[..., 0] + Wt[j]  # the rest world point, as the chain builds it
            nb = torch.tensor(flat)[n]
            rel = (WR[nb].transpose(-1, -2) @ (in_j - Wt[nb])[..., None])[..., 0]
            Q[k, :, :3].index_add_(0, n, w[:, None] * rel)
            Q[k, :, 3].index_add_(0, n, w)
        return {"levels": levels, "nodes": torch.tensor(flat), "Q": Q.to(self.dtype),
                "free_pos": torch.tensor([flat.index(c) - 1 for c in free])}

    def _run(self, red, W_R0: torch.Tensor, D_free: torch.Tensor) -> torch.Tensor:
        """Points (B, K, 3) of a reduced chain for the root rotation and the free bones' local rotations
        (D_free in the order the chain was built with)."""
        # index_select rather than fancy indexing: its backward is an index_add, ~10x cheaper here.
        D = D_free.to(self.dtype).index_select(1, red["free_pos"])  # node order (root excluded)
        Rs = [W_R0.to(self.dtype)[:, None]]
        ts = [torch.zeros(W_R0.shape[0], 1, 3, dtype=self.dtype)]
        start = 0
        for idx, local, A, b, Uc in red["levels"]:
            n = len(idx)
            pr, pt = Rs[-1].index_select(1, local), ts[-1].index_select(1, local)
            Rs.append(pr @ A @ D[:, start:start + n] @ Uc)
            ts.append(pt + (pr @ b[None, ..., None])[..., 0])
            start += n
        R, t = torch.cat(Rs, 1), torch.cat(ts, 1)
        Q = red["Q"]
        return torch.einsum("bnrc,knc->bkr", R, Q[..., :3]) + torch.einsum("bnr,kn->bkr", t, Q[..., 3])

    def full_rotations(self, body_R: torch.Tensor) -> torch.Tensor:
        B = body_R.shape[0]
        D = torch.eye(3, dtype=self.dtype).repeat(B, len(self.labels), 1, 1)
        D[:, self.body_idx] = body_R.to(self.dtype)
        return D

    def body_points(self, root_R: torch.Tensor, body_R: torch.Tensor) -> torch.Tensor:
        """(B, 23 + 8, 3): FIT_KEYPOINTS, then the hand anchors (left wrist, index, middle, pinky; right ...)."""
        return self._run(self.body_red, root_R, body_R)

    def hand_points(self, side: str, G: torch.Tensor, finger_R: torch.Tensor) -> torch.Tensor:
        """Wrist-rooted hand: G is the wrist bone's world rotation (rest: U_wrist), wrist head at the origin."""
        s = "L" if side in ("L", "left") else "R"
        return self._run(self.hand_red[s], G, finger_R)

    def hand_rest_G(self, side: str) -> torch.Tensor:
        s = "L" if side in ("L", "left") else "R"
        return self.U[self.index[f"wrist.{s}"]]

    def _hinges(self) -> list[tuple[int, torch.Tensor]]:
        """Knee axis = thigh x backward, elbow axis = upper arm x forward (positive rotation = flexion)."""
        h = self.hrest
        fwd = torch.tensor(self.forward_axis, dtype=self.dtype)
        out = []
        for s in ("L", "R"):
            for joint, a, b, sign in ((f"lowerleg01.{s}", f"upperleg01.{s}", f"lowerleg01.{s}", -1.0),
                                      (f"lowerarm01.{s}", f"upperarm01.{s}", f"lowerarm01.{s}", 1.0)):
                d = torch.nn.functional.normalize(h[self.index[b]] - h[self.index[a]], dim=0)
                axis = torch.nn.functional.normalize(torch.linalg.cross(d, sign * fwd), dim=0)
                out.append((lf.ANNY_BODY_BONES.index(joint), axis))
        return out

    # ------------------------------------------------------------------ export
    def anny_pose_parameters(self, root_R: torch.Tensor, body_R: torch.Tensor,
                             transl: torch.Tensor | None = None) -> torch.Tensor:
        """(B, bones, 4, 4) Anny 'local-ref' pose parameters (root: D_0 = U_0 W_0 U_0^T, here U_0 = I)."""
        D = self.full_rotations(body_R).double()
        B = D.shape[0]
        out = torch.eye(4, dtype=torch.float64).repeat(B, len(self.labels), 1, 1)
        out[..., :3, :3] = D
        U0 = self.U[0].double()
        out[:, 0, :3, :3] = U0 @ root_R.double() @ U0.T
        if transl is not None:
            out[:, 0, :3, 3] = transl.double()
        return out


@functools.cache
def anny_backend(phenotype_items: tuple = ()) -> AnnyBackend:
    return AnnyBackend(dict(phenotype_items) or None)


# ---------------------------------------------------------------------------------------------- SMPL + MANO
# SMPL joints -> FIT_KEYPOINTS (COCO order). 24+ indices are smplx's vertex-picked extra joints (nose, reye, leye,
# rear, lear, LBigToe, LSmallToe, LHeel, RBigToe, RSmallToe, RHeel).
_SMPL_FIT = (24, 26, 25, 28, 27, 16, 17, 18, 19, 20, 21, 1, 2, 4, 5, 7, 8, 29, 32, 30, 33, 31, 34)
# MANO joints (wrist, index1-3, middle1-3, pinky1-3, ring1-3, thumb1-3) + tips -> mediapipe hand order.
_MANO_TO_MP = (0, 13, 14, 15, "thumb", 1, 2, 3, "index", 4, 5, 6, "middle", 10, 11, 12, "ring", 7, 8, 9, "pinky")
# Conventional MANO fingertip vertices (thumb, index, middle, ring, pinky).
MANO_TIP_VERTICES = {"thumb": 744, "index": 320, "middle": 443, "ring": 554, "pinky": 671}
# smplx's default SMPL extra-joint vertices (vertex_ids['smplh']) cover 6890-vertex meshes only.
SMPL_EXTRA_KEYS = ("nose", "reye", "leye", "rear", "lear", "LBigToe", "LSmallToe", "LHeel", "RBigToe",
                   "RSmallToe", "RHeel", "lthumb", "lindex", "lmiddle", "lring", "lpinky", "rthumb", "rindex",
                   "rmiddle", "rring", "rpinky")


class SmplxBackend:
    """SMPL body (theta_body = SMPL joints 1..21) + MANO hands (15 joints each) from configured model files:
    `smpl_path` (SMPL_NEUTRAL.pkl or a folder), `mano_dir` (MANO_LEFT.pkl / MANO_RIGHT.pkl). `vertex_ids`
    overrides smplx's extra-joint vertices and `mano_tip_vertices` the fingertip vertices (needed for meshes
    other than the real 6890 / 778-vertex ones, e.g. the small stand-ins the tests generate)."""

    name = "smplx"
    forward_axis = (0.0, 0.0, 1.0)  # SMPL faces +Z, Y up
    hand_anchors = ()  # SMPL has no finger joints: the wrist rotation is left to the prior

    def __init__(self, smpl_path: str, mano_dir: str, vertex_ids: dict | None = None,
                 mano_tip_vertices: dict | None = None, dtype=torch.float32):
        import smplx

        for p in (smpl_path, mano_dir):
            if not p or not Path(p).exists():
                raise FileNotFoundError(f"smplx backend: model file/folder {p!r} not found (SMPL/MANO are licensed: "
                                        "download them yourself and set pseudo_label.smplx paths)")
        self.dtype = dtype
        kw = {"vertex_ids": vertex_ids} if vertex_ids else {}
        self.smpl = smplx.SMPL(model_path=smpl_path, **kw).to(dtype)
        self.mano = {s: smplx.MANO(model_path=mano_dir, is_rhand=(s == "R"), use_pca=False, flat_hand_mean=True)
                     .to(dtype) for s in ("L", "R")}
        self.tips = dict(MANO_TIP_VERTICES, **(mano_tip_vertices or {}))
        with torch.no_grad():
            J = self.smpl().joints[0]
        self.rest_joints = J
        self.hinges = self._hinges()

    def body_points(self, root_R, body_R):
        B = root_R.shape[0]
        import roma

        aa = roma.rotmat_to_rotvec(body_R.to(self.dtype)).reshape(B, -1)
        pose = torch.cat([aa, torch.zeros(B, 6, dtype=self.dtype)], 1)  # SMPL hand joints 22/23 stay at rest
        out = self.smpl(global_orient=roma.rotmat_to_rotvec(root_R.to(self.dtype)), body_pose=pose,
                        betas=torch.zeros(B, self.smpl.num_betas, dtype=self.dtype))
        J = out.joints
        return J[:, list(_SMPL_FIT)] - J[:, :1]

    def hand_points(self, side, G, finger_R):
        import roma

        s = "L" if side in ("L", "left") else "R"
        N = G.shape[0]
        m = self.mano[s]
        out = m(global_orient=roma.rotmat_to_rotvec(G.to(self.dtype)),
                hand_pose=roma.rotmat_to_rotvec(finger_R.to(self.dtype)).reshape(N, -1),
                betas=torch.zeros(N, m.num_betas, dtype=self.dtype))
        J, V = out.joints, out.vertices
        pts = [V[:, self.tips[k]] if isinstance(k, str) else J[:, k] for k in _MANO_TO_MP]
        P = torch.stack(pts, 1)
        return P - P[:, :1]

    def hand_rest_G(self, side: str) -> torch.Tensor:
        return torch.eye(3, dtype=self.dtype)

    def _hinges(self):
        J = self.rest_joints
        fwd = torch.tensor(self.forward_axis, dtype=self.dtype)
        out = []
        # (joint, parent) in SMPL indices; body index = SMPL index - 1.
        for joint, parent, sign in ((4, 1, -1.0), (5, 2, -1.0), (18, 16, 1.0), (19, 17, 1.0)):
            d = torch.nn.functional.normalize(J[joint] - J[parent], dim=0)
            axis = torch.linalg.cross(d, sign * fwd)
            if axis.norm() > 1e-6:
                out.append((joint - 1, torch.nn.functional.normalize(axis, dim=0)))
        return out


def make_backend(params: dict):
    """The backend a `pseudo_label` parameter block asks for (`body_model: anny | smplx`)."""
    kind = params.get("body_model", "anny")
    if kind == "anny":
        return anny_backend(tuple(sorted((params.get("anny_phenotype") or {}).items())))
    if kind == "smplx":
        cfg = params.get("smplx") or {}
        return SmplxBackend(cfg.get("smpl_path"), cfg.get("mano_dir"), cfg.get("vertex_ids"),
                            cfg.get("mano_tip_vertices"))
    raise ValueError(f"pseudo_label.body_model must be 'anny' or 'smplx', got {kind!r}")


def write_standin_smpl(path: str | Path, num_vertices: int, num_joints: int, kintree_parents: list[int],
                       joints: np.ndarray, seed: int = 0, num_betas: int = 10, hands: bool = False) -> Path:
    """A small SMPL/MANO-format pickle (same keys and shapes as the licensed files, tiny mesh): each vertex sits
    near a joint and is skinned to it. For tests and for exercising the smplx code path without licensed files."""
    rng = np.random.default_rng(seed)
    V, J = num_vertices, num_joints
    owner = np.arange(V) % J
    v = joints[owner] + rng.normal(0, 0.01, (V, 3))
    weights = np.zeros((V, J))
    weights[np.arange(V), owner] = 1.0
    reg = np.zeros((J, V))
    for j in range(J):
        members = np.nonzero(owner == j)[0]
        reg[j, members] = 1.0 / len(members)
    faces = np.stack([np.arange(V), np.roll(np.arange(V), 1), np.roll(np.arange(V), 2)], 1).astype(np.int64)
    data = {"v_template": v, "f": faces, "J_regressor": reg, "weights": weights,
            "kintree_table": np.stack([np.array(kintree_parents, dtype=np.int64) % (2 ** 32),
                                       np.arange(J)]).astype(np.int64),
            "shapedirs": rng.normal(0, 1e-3, (V, 3, num_betas)), "posedirs": np.zeros((V, 3, 9 * (J - 1)))}
    if hands:
        data["hands_components"] = np.eye(45)
        data["hands_mean"] = np.zeros(45)
    # smplx reads the regressor through scipy-sparse-like `.tocsc()` only when it is sparse; dense works.
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(data, f)
    return path
