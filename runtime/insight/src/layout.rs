//! A left-to-right layered layout of a process map, shared by the BPMN diagram and the
//! SVG drawing.
//!
//! Gateways are added where paths split (a step followed by different steps in
//! different runs) and where they join (a step reached from different steps), as BPMN
//! draws choices. Then: loops are broken by a depth-first search from the start (arrows
//! back to a step on the current path go back), each shape takes the column of its
//! longest path from the start, ends share the last column, shapes in a column are
//! ordered by the mean position of their predecessors and successors (a few sweeps),
//! forward arrows to the next column bend once in the gap between, arrows that skip
//! columns run in lanes above the drawing and backward ones in lanes below it.

use std::collections::VecDeque;

use crate::mine::{NodeKind, ProcessMap};

/// What a placed shape draws.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// Map node `n` (its kind decides event or task).
    Node(usize),
    /// The exclusive gateway where paths leaving node `n` split.
    Split(usize),
    /// The exclusive gateway where paths entering node `n` join.
    Join(usize),
}

/// A shape with its box (top-left corner, width, height).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Placed {
    /// What it is.
    pub shape: Shape,
    /// Left.
    pub x: f64,
    /// Top.
    pub y: f64,
    /// Width.
    pub w: f64,
    /// Height.
    pub h: f64,
    /// Its column, from 0.
    pub column: usize,
}

impl Placed {
    /// The centre.
    pub fn centre(&self) -> (f64, f64) {
        (self.x + self.w / 2.0, self.y + self.h / 2.0)
    }
}

/// A drawn arrow between two placed shapes.
#[derive(Clone, Debug, PartialEq)]
pub struct Route {
    /// Index of the shape it leaves.
    pub from: usize,
    /// Index of the shape it enters.
    pub to: usize,
    /// The map edge it carries (the branch of a split or the arrow itself), if any; the
    /// arrows into a split and out of a join carry none.
    pub edge: Option<usize>,
    /// Waypoints, first on the source's border, last on the target's.
    pub points: Vec<(f64, f64)>,
    /// Whether it runs backwards (a loop).
    pub back: bool,
}

/// Shapes and arrows with coordinates, and the size of the whole drawing.
#[derive(Clone, Debug, PartialEq)]
pub struct Layout {
    /// The shapes.
    pub shapes: Vec<Placed>,
    /// The arrows.
    pub routes: Vec<Route>,
    /// Width of the drawing.
    pub width: f64,
    /// Height of the drawing.
    pub height: f64,
}

const MARGIN: f64 = 40.0;
const COLUMN: f64 = 200.0;
const ROW: f64 = 130.0;
const TASK: (f64, f64) = (130.0, 76.0);
const EVENT: f64 = 36.0;
const GATEWAY: f64 = 50.0;
const LANE: f64 = 22.0;

/// Whether a map node is drawn as an event (a circle) rather than a task (a box).
pub(crate) fn is_event(kind: NodeKind) -> bool {
    matches!(kind, NodeKind::Start | NodeKind::Timer | NodeKind::Signal) || kind.is_end()
}

impl Layout {
    /// Lays out `map`.
    pub fn of(map: &ProcessMap) -> Self {
        let n = map.nodes.len();
        let mut out_degree = vec![0usize; n];
        let mut in_degree = vec![0usize; n];
        for edge in &map.edges {
            out_degree[edge.from] += 1;
            in_degree[edge.to] += 1;
        }
        let mut shapes: Vec<Shape> = (0..n).map(Shape::Node).collect();
        let mut split = vec![None; n];
        let mut join = vec![None; n];
        for node in 0..n {
            if out_degree[node] > 1 {
                split[node] = Some(shapes.len());
                shapes.push(Shape::Split(node));
            }
            if in_degree[node] > 1 {
                join[node] = Some(shapes.len());
                shapes.push(Shape::Join(node));
            }
        }
        // (from, to, map edge)
        let mut arrows: Vec<(usize, usize, Option<usize>)> = Vec::new();
        for node in 0..n {
            if let Some(s) = split[node] {
                arrows.push((node, s, None));
            }
            if let Some(j) = join[node] {
                arrows.push((j, node, None));
            }
        }
        for (index, edge) in map.edges.iter().enumerate() {
            let from = split[edge.from].unwrap_or(edge.from);
            let to = join[edge.to].unwrap_or(edge.to);
            arrows.push((from, to, Some(index)));
        }
        let count = shapes.len();
        let mut successors: Vec<Vec<usize>> = vec![Vec::new(); count];
        for (a, &(from, _, _)) in arrows.iter().enumerate() {
            successors[from].push(a);
        }

        // Depth-first from the start: arrows into a shape on the current path go back.
        let mut back = vec![false; arrows.len()];
        let mut state = vec![0u8; count]; // 0 unseen, 1 on the path, 2 done
        let mut discovered: Vec<usize> = Vec::with_capacity(count);
        let mut roots: Vec<usize> = vec![0];
        roots.extend(1..count);
        for root in roots {
            if state[root] != 0 {
                continue;
            }
            let mut stack: Vec<(usize, usize)> = vec![(root, 0)];
            state[root] = 1;
            discovered.push(root);
            while let Some(top) = stack.last_mut() {
                let (shape, next) = *top;
                if let Some(&a) = successors[shape].get(next) {
                    top.1 += 1;
                    let to = arrows[a].1;
                    match state[to] {
                        0 => {
                            state[to] = 1;
                            discovered.push(to);
                            stack.push((to, 0));
                        }
                        1 => back[a] = true,
                        _ => {}
                    }
                } else {
                    state[shape] = 2;
                    stack.pop();
                }
            }
        }

        // Longest path from the start over the forward arrows.
        let mut column = vec![0usize; count];
        let mut pending = vec![0usize; count];
        for (a, &(_, to, _)) in arrows.iter().enumerate() {
            if !back[a] {
                pending[to] += 1;
            }
        }
        let mut ready: VecDeque<usize> = (0..count).filter(|&s| pending[s] == 0).collect();
        while let Some(shape) = ready.pop_front() {
            for &a in &successors[shape] {
                if back[a] {
                    continue;
                }
                let to = arrows[a].1;
                column[to] = column[to].max(column[shape] + 1);
                pending[to] -= 1;
                if pending[to] == 0 {
                    ready.push_back(to);
                }
            }
        }
        let is_end = |shape: Shape| matches!(shape, Shape::Node(i) if map.nodes[i].kind.is_end());
        let last = (0..count)
            .filter(|&s| !is_end(shapes[s]))
            .map(|s| column[s])
            .max()
            .unwrap_or(0)
            + 1;
        for s in 0..count {
            if is_end(shapes[s]) {
                column[s] = last;
            }
        }
        let columns = column.iter().copied().max().unwrap_or(0) + 1;

        // Order within columns: discovery order, then barycentre sweeps.
        let mut rows: Vec<Vec<usize>> = vec![Vec::new(); columns];
        for &s in &discovered {
            rows[column[s]].push(s);
        }
        let mut position = vec![0f64; count];
        let place = |rows: &Vec<Vec<usize>>, position: &mut Vec<f64>| {
            for row in rows {
                for (i, &s) in row.iter().enumerate() {
                    position[s] = i as f64 - (row.len() as f64 - 1.0) / 2.0;
                }
            }
        };
        place(&rows, &mut position);
        let neighbours: Vec<Vec<usize>> = (0..count)
            .map(|s| {
                arrows
                    .iter()
                    .enumerate()
                    .filter(|(a, _)| !back[*a])
                    .filter_map(|(_, &(from, to, _))| {
                        if from == s {
                            Some(to)
                        } else if to == s {
                            Some(from)
                        } else {
                            None
                        }
                    })
                    .collect()
            })
            .collect();
        for _ in 0..6 {
            for row in rows.iter_mut() {
                let mut keyed: Vec<(f64, usize)> = row
                    .iter()
                    .map(|&s| {
                        let near = &neighbours[s];
                        let mean = if near.is_empty() {
                            position[s]
                        } else {
                            near.iter().map(|&o| position[o]).sum::<f64>() / near.len() as f64
                        };
                        (mean, s)
                    })
                    .collect();
                keyed.sort_by(|a, b| a.0.total_cmp(&b.0));
                *row = keyed.into_iter().map(|(_, s)| s).collect();
            }
            place(&rows, &mut position);
        }

        let tallest = rows.iter().map(Vec::len).max().unwrap_or(1) as f64;
        // A forward arrow that skips columns would cross the shapes between; it runs in
        // a lane of its own above the drawing instead, entering and leaving through the
        // gaps between columns, which hold no shapes.
        let skips: Vec<bool> = arrows
            .iter()
            .enumerate()
            .map(|(a, &(from, to, _))| !back[a] && column[to] > column[from] + 1)
            .collect();
        let top_lanes = skips.iter().filter(|&&s| s).count();
        let top = MARGIN + top_lanes as f64 * LANE;
        let mut placed: Vec<Placed> = shapes
            .iter()
            .map(|&shape| Placed {
                shape,
                x: 0.0,
                y: 0.0,
                w: 0.0,
                h: 0.0,
                column: 0,
            })
            .collect();
        for (c, row) in rows.iter().enumerate() {
            for &s in row {
                let (w, h) = match shapes[s] {
                    Shape::Node(i) if is_event(map.nodes[i].kind) => (EVENT, EVENT),
                    Shape::Node(_) => TASK,
                    Shape::Split(_) | Shape::Join(_) => (GATEWAY, GATEWAY),
                };
                let cx = MARGIN + TASK.0 / 2.0 + c as f64 * COLUMN;
                let cy = top + ROW / 2.0 + (tallest - 1.0) / 2.0 * ROW + position[s] * ROW;
                placed[s] = Placed {
                    shape: shapes[s],
                    x: cx - w / 2.0,
                    y: cy - h / 2.0,
                    w,
                    h,
                    column: c,
                };
            }
        }
        let bottom = top + tallest * ROW;
        let mut lanes = 0usize;
        let mut over = 0usize;
        // The middle of the gap right after a shape's column, and right before one's.
        let gap_after = |p: &Placed| p.x + p.w + (COLUMN - TASK.0) / 2.0 + (TASK.0 - p.w) / 2.0;
        let gap_before = |p: &Placed| p.x - (COLUMN - TASK.0) / 2.0 - (TASK.0 - p.w) / 2.0;
        let routes: Vec<Route> = arrows
            .iter()
            .enumerate()
            .map(|(a, &(from, to, edge))| {
                let (f, t) = (placed[from], placed[to]);
                let (fx, fy) = f.centre();
                let (tx, ty) = t.centre();
                let points = if back[a] {
                    lanes += 1;
                    let lane = bottom + lanes as f64 * LANE;
                    vec![(fx, f.y + f.h), (fx, lane), (tx, lane), (tx, t.y + t.h)]
                } else if skips[a] {
                    let lane = MARGIN / 2.0 + over as f64 * LANE + LANE / 2.0;
                    over += 1;
                    let (out, into) = (gap_after(&f), gap_before(&t));
                    vec![
                        (f.x + f.w, fy),
                        (out, fy),
                        (out, lane),
                        (into, lane),
                        (into, ty),
                        (t.x, ty),
                    ]
                } else if (fy - ty).abs() < 0.5 {
                    vec![(f.x + f.w, fy), (t.x, ty)]
                } else {
                    // One bend, in the gap right after the source's column.
                    let bend = gap_after(&f);
                    vec![(f.x + f.w, fy), (bend, fy), (bend, ty), (t.x, ty)]
                };
                Route {
                    from,
                    to,
                    edge,
                    points,
                    back: back[a],
                }
            })
            .collect();
        Layout {
            width: MARGIN * 2.0 + TASK.0 + (columns as f64 - 1.0) * COLUMN,
            height: bottom + lanes as f64 * LANE + MARGIN,
            shapes: placed,
            routes,
        }
    }
}
