"""Rasterise posed Anny meshes with moderngl on a headless EGL context (Mesa llvmpipe on CPU).

Cameras are OpenCV pinhole cameras: world->camera extrinsics E (x right, y down, z forward) and intrinsics K
in pixels with pixel centres at integer coordinates (u = 0 is the centre of the first column). The projection
matrix below maps exactly that model to OpenGL clip space, so the ground-truth 2D joints (K, E) and the
rendered pixels agree. Background: one full-screen pass ray-casts a sky gradient and a filtered checker
ground (z = 0) with a soft contact shadow; the person is drawn over it with depth test and 4x MSAA.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

_BACKGROUND_VS = """
#version 330
in vec2 in_xy;
void main() { gl_Position = vec4(in_xy, 0.0, 1.0); }
"""

_BACKGROUND_FS = """
#version 330
uniform mat3 cam_to_world;   // rotation camera -> world
uniform vec3 cam_center;     // camera centre in world coordinates
uniform vec4 intr;           // fx, fy, cx, cy (OpenCV, pixel centres at integers)
uniform vec2 size;           // width, height
uniform vec3 sky_zenith, sky_horizon, ground_a, ground_b, light_dir;
uniform float checker_size;
uniform vec3 shadow;         // x, y, radius of the contact shadow
out vec4 color;

float checker(vec2 p) {      // box-filtered checkerboard: no aliasing at grazing angles
    vec2 w = max(abs(dFdx(p)), abs(dFdy(p))) + 1e-4;
    vec2 i = 2.0 * (abs(fract((p - 0.5 * w) * 0.5) - 0.5) - abs(fract((p + 0.5 * w) * 0.5) - 0.5)) / w;
    return 0.5 - 0.5 * i.x * i.y;
}

void main() {
    float u = gl_FragCoord.x - 0.5;
    float v = size.y - gl_FragCoord.y - 0.5;
    vec3 ray = normalize(cam_to_world * vec3((u - intr.z) / intr.x, (v - intr.w) / intr.y, 1.0));
    vec3 sky = mix(sky_horizon, sky_zenith, pow(clamp(ray.z, 0.0, 1.0), 0.6));
    if (ray.z >= -1e-4) { color = vec4(sky, 1.0); return; }
    float t = -cam_center.z / ray.z;
    vec3 hit = cam_center + t * ray;
    vec3 ground = mix(ground_a, ground_b, checker(hit.xy / checker_size));
    ground *= 0.55 + 0.45 * clamp(light_dir.z, 0.0, 1.0);
    float d = length(hit.xy - shadow.xy) / shadow.z;
    ground *= 1.0 - 0.45 * exp(-d * d);
    float fade = smoothstep(12.0, 45.0, t);   // distant ground melts into the horizon haze
    color = vec4(mix(ground, sky_horizon, fade), 1.0);
}
"""

_MESH_VS = """
#version 330
uniform mat4 view;   // world -> camera (OpenCV)
uniform mat4 proj;   // camera (OpenCV) -> clip
in vec3 in_pos;
in vec3 in_normal;
in vec3 in_color;
out vec3 v_pos;
out vec3 v_normal;
out vec3 v_color;
void main() {
    v_pos = in_pos;
    v_normal = in_normal;
    v_color = in_color;
    gl_Position = proj * view * vec4(in_pos, 1.0);
}
"""

_MESH_FS = """
#version 330
uniform vec3 cam_center, light_dir, sky_zenith, ground_a;
uniform float flat_white;    // 1: silhouette pass
in vec3 v_pos;
in vec3 v_normal;
in vec3 v_color;
out vec4 color;
void main() {
    if (flat_white > 0.5) { color = vec4(1.0); return; }
    vec3 n = normalize(v_normal);
    if (dot(n, cam_center - v_pos) < 0.0) n = -n;   // two-sided: independent of the mesh winding
    float key = max(dot(n, normalize(light_dir)), 0.0);
    vec3 hemi = mix(ground_a * 0.6, sky_zenith, 0.5 + 0.5 * n.z);   // sky / ground bounce light
    vec3 c = v_color * (0.75 * key + 0.45 * hemi + 0.08);
    color = vec4(clamp(c, 0.0, 1.0), 1.0);
}
"""


@dataclass(frozen=True)
class Scene:
    sky_zenith: tuple = (0.35, 0.55, 0.85)
    sky_horizon: tuple = (0.80, 0.87, 0.95)
    ground_a: tuple = (0.55, 0.55, 0.52)
    ground_b: tuple = (0.38, 0.38, 0.36)
    checker_size: float = 0.5
    light_dir: tuple = (0.4, -0.5, 0.75)

    @staticmethod
    def sample(rng: np.random.Generator) -> Scene:
        """A random sky gradient (day / dusk / overcast hues), ground checker colours and sun direction."""
        hue = rng.uniform(0, 1, 3)
        zenith = np.clip(np.array([0.25, 0.45, 0.85]) + (hue - 0.5) * np.array([0.5, 0.3, 0.3]), 0, 1)
        horizon = np.clip(np.array([0.85, 0.85, 0.9]) + (rng.uniform(0, 1, 3) - 0.5) * 0.3, 0, 1)
        base = rng.uniform(0.25, 0.7) * np.clip(1 + (rng.uniform(0, 1, 3) - 0.5) * 0.5, 0, 2)
        az, el = rng.uniform(0, 2 * np.pi), rng.uniform(np.deg2rad(30), np.deg2rad(70))
        return Scene(tuple(zenith), tuple(horizon), tuple(np.clip(base, 0, 1)),
                     tuple(np.clip(base * rng.uniform(0.55, 0.8), 0, 1)), float(rng.uniform(0.3, 1.0)),
                     (float(np.cos(el) * np.cos(az)), float(np.cos(el) * np.sin(az)), float(np.sin(el))))

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


def projection(K: np.ndarray, width: int, height: int, near: float = 0.05, far: float = 200.0) -> np.ndarray:
    """OpenCV intrinsics -> OpenGL clip matrix acting on OpenCV camera coordinates (w = depth)."""
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    P = np.zeros((4, 4))
    P[0, 0], P[0, 2] = 2 * fx / width, 2 * (cx + 0.5) / width - 1
    P[1, 1], P[1, 2] = -2 * fy / height, 1 - 2 * (cy + 0.5) / height
    P[2, 2], P[2, 3] = (far + near) / (far - near), -2 * far * near / (far - near)
    P[3, 2] = 1.0
    return P


def vertex_normals(vertices: np.ndarray, faces: np.ndarray, incidence=None) -> np.ndarray:
    """Area-weighted vertex normals for (T, V, 3) vertices. A sparse vertex-face incidence product: fast, and
    (unlike a threaded scatter-add) summed in a fixed order, so the same mesh always shades the same."""
    if incidence is None:
        incidence = face_incidence(faces, vertices.shape[1])
    v = np.asarray(vertices, dtype=np.float64)
    fn = np.cross(v[:, faces[:, 1]] - v[:, faces[:, 0]], v[:, faces[:, 2]] - v[:, faces[:, 0]])
    T, F = fn.shape[:2]
    vn = incidence @ fn.transpose(1, 0, 2).reshape(F, T * 3)
    vn = vn.reshape(-1, T, 3).transpose(1, 0, 2)
    return (vn / np.maximum(np.linalg.norm(vn, axis=-1, keepdims=True), 1e-12)).astype(np.float32)


def face_incidence(faces: np.ndarray, num_vertices: int):
    import scipy.sparse

    rows = np.asarray(faces, dtype=np.int64).ravel()
    cols = np.repeat(np.arange(len(faces)), 3)
    return scipy.sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(num_vertices, len(faces)))


@functools.cache
def _context():
    import moderngl

    # One headless context per process (EGL + Mesa llvmpipe: no display, no GPU needed).
    return moderngl.create_standalone_context(backend="egl")


class Renderer:
    """Renders a mesh sequence at a fixed size. Reuse one instance: building programs and buffers costs."""

    def __init__(self, width: int, height: int, faces: np.ndarray, num_vertices: int, samples: int = 4):
        import moderngl

        self.ctx = ctx = _context()
        self.width, self.height = int(width), int(height)
        samples = min(samples, ctx.max_samples)
        self.fbo_ms = ctx.framebuffer(
            color_attachments=[ctx.renderbuffer((self.width, self.height), 4, samples=samples)],
            depth_attachment=ctx.depth_renderbuffer((self.width, self.height), samples=samples))
        self.fbo = ctx.framebuffer(color_attachments=[ctx.renderbuffer((self.width, self.height), 4)],
                                   depth_attachment=ctx.depth_renderbuffer((self.width, self.height)))
        self.bg_prog = ctx.program(vertex_shader=_BACKGROUND_VS, fragment_shader=_BACKGROUND_FS)
        self.mesh_prog = ctx.program(vertex_shader=_MESH_VS, fragment_shader=_MESH_FS)
        tri = np.array([-1, -1, 3, -1, -1, 3], dtype="f4")  # one triangle covering the screen
        self.bg_vao = ctx.vertex_array(self.bg_prog, [(ctx.buffer(tri.tobytes()), "2f", "in_xy")])
        self.faces = np.asarray(faces, dtype=np.int64)
        self.num_vertices = int(num_vertices)
        self.incidence = face_incidence(self.faces, self.num_vertices)
        self.vbo_pn = ctx.buffer(reserve=self.num_vertices * 6 * 4, dynamic=True)
        self.vbo_col = ctx.buffer(reserve=self.num_vertices * 3 * 4, dynamic=True)
        ibo = ctx.buffer(np.asarray(faces, dtype="i4").tobytes())
        self.mesh_vao = ctx.vertex_array(
            self.mesh_prog, [(self.vbo_pn, "3f 3f", "in_pos", "in_normal"), (self.vbo_col, "3f", "in_color")],
            index_buffer=ibo)
        self._moderngl = moderngl

    def _set(self, prog, name, value):
        if name in prog:
            v = np.asarray(value, dtype="f4")
            prog[name].write((v.T if v.ndim == 2 else v).tobytes())  # GLSL matrices are column-major

    def render(self, vertices: np.ndarray, colors: np.ndarray, K: np.ndarray, E: np.ndarray, scene: Scene,
               shadow_xy: np.ndarray | None = None, mask: bool = False) -> np.ndarray:
        """(T, V, 3) world vertices, (V, 3) colours, (T, 3, 3) K, (T, 4, 4) world->camera E.
        Returns (T, H, W, 3) uint8 RGB, or (T, H, W) bool person silhouettes when mask=True."""
        ctx, mgl = self.ctx, self._moderngl
        verts = np.asarray(vertices, dtype=np.float32)
        normals = vertex_normals(verts, self.faces, self.incidence)
        pn = np.concatenate([verts, normals], -1)
        self.vbo_col.write(np.ascontiguousarray(colors, dtype="f4").tobytes())
        T = len(verts)
        out = np.empty((T, self.height, self.width) + (() if mask else (3,)),
                       dtype=bool if mask else np.uint8)
        fbo = self.fbo if mask else self.fbo_ms
        for name, val in (("sky_zenith", scene.sky_zenith), ("sky_horizon", scene.sky_horizon),
                          ("ground_a", scene.ground_a), ("ground_b", scene.ground_b),
                          ("light_dir", np.asarray(scene.light_dir) / np.linalg.norm(scene.light_dir)),
                          ("checker_size", scene.checker_size), ("size", (self.width, self.height))):
            self._set(self.bg_prog, name, val)
            self._set(self.mesh_prog, name, val)
        self._set(self.mesh_prog, "flat_white", 1.0 if mask else 0.0)
        for t in range(T):
            Rwc = E[t, :3, :3]
            center = -Rwc.T @ E[t, :3, 3]
            fbo.use()
            if mask:
                ctx.clear(0.0, 0.0, 0.0, 1.0)
            else:
                ctx.clear(0.0, 0.0, 0.0, 1.0)
                ctx.disable(mgl.DEPTH_TEST)
                self._set(self.bg_prog, "cam_to_world", Rwc.T)
                self._set(self.bg_prog, "cam_center", center)
                self._set(self.bg_prog, "intr", (K[t, 0, 0], K[t, 1, 1], K[t, 0, 2], K[t, 1, 2]))
                sx, sy = (shadow_xy[t] if shadow_xy is not None else (0.0, 0.0))
                self._set(self.bg_prog, "shadow", (sx, sy, 0.35))
                self.bg_vao.render()
            ctx.enable(mgl.DEPTH_TEST)
            self.vbo_pn.write(np.ascontiguousarray(pn[t]).tobytes())
            self._set(self.mesh_prog, "view", E[t])
            self._set(self.mesh_prog, "proj", projection(K[t], self.width, self.height))
            self._set(self.mesh_prog, "cam_center", center)
            self.mesh_vao.render()
            if not mask:
                ctx.copy_framebuffer(self.fbo, self.fbo_ms)  # MSAA resolve
            raw = self.fbo.read(components=3, alignment=1)
            img = np.frombuffer(raw, dtype=np.uint8).reshape(self.height, self.width, 3)[::-1]
            out[t] = img[..., 0] > 127 if mask else img
        return out

    def release(self) -> None:
        for obj in (self.fbo_ms, self.fbo, self.bg_vao, self.mesh_vao, self.vbo_pn, self.vbo_col,
                    self.bg_prog, self.mesh_prog):
            obj.release()


@functools.cache
def renderer(width: int, height: int, samples: int = 4) -> Renderer:
    """A shared renderer for Anny's mesh at this size."""
    from dimo.synthesis import body

    return Renderer(width, height, body.triangles(), body.load_model().template_vertices.shape[0], samples)
