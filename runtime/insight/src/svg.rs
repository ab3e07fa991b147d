//! A process map drawn as SVG, on the same layout as the BPMN diagram: events as
//! circles, steps as boxes with their count and median duration, gateways as diamonds,
//! arrows as thick as their share of runs, bottlenecks in red with their median time.
//!
//! Only presentation attributes are used (no `style`), so a page with a strict Content
//! Security Policy can show it inline.

use std::fmt::Write as _;

use crate::bpmn::{escape, flow_name};
use crate::layout::{is_event, Layout, Shape};
use crate::mine::{human_ms, NodeKind, ProcessMap};

const INK: &str = "#1f2937";
const MUTED: &str = "#6b7280";
const LINE: &str = "#94a3b8";
const HOT: &str = "#dc2626";
const FONT: &str = "font-family=\"system-ui, -apple-system, 'Segoe UI', sans-serif\"";

/// Splits `text` into at most two lines of about `width` characters, the second cut
/// with an ellipsis when needed.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines: Vec<String> = vec![String::new()];
    for word in text.split_whitespace() {
        let current = lines.last_mut().map_or(0, |l| l.chars().count());
        if current > 0 && current + 1 + word.chars().count() > width {
            lines.push(String::new());
        }
        if let Some(line) = lines.last_mut() {
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(word);
        }
    }
    if lines.len() > 2 {
        let rest = lines.split_off(1).join(" ");
        lines.push(rest);
    }
    for line in &mut lines {
        if line.chars().count() > width {
            *line = line
                .chars()
                .take(width.saturating_sub(1))
                .collect::<String>()
                + "…";
        }
    }
    lines
}

/// Draws `map` as a standalone SVG document.
///
/// # Example
/// ```
/// # use cairn_insight::{svg, ProcessMap};
/// let map = ProcessMap::mine("loan", std::iter::empty::<&[cairn_core::journal::StoredEvent]>());
/// assert!(svg::to_svg(&map).starts_with("<svg"));
/// ```
pub fn to_svg(map: &ProcessMap) -> String {
    let layout = Layout::of(map);
    let most = map.edges.iter().map(|e| e.count).max().unwrap_or(1).max(1) as f64;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w:.0}\" height=\"{h:.0}\" viewBox=\"0 0 {w:.0} {h:.0}\" role=\"img\" aria-label=\"Process map of {name}\" {FONT} font-size=\"12\">",
        w = layout.width,
        h = layout.height,
        name = escape(&map.workflow_type)
    );
    let _ = writeln!(
        svg,
        "<title>Process map of {} mined from {} runs</title>",
        escape(&map.workflow_type),
        map.runs
    );
    for (id, colour) in [("arrow", LINE), ("arrow-hot", HOT)] {
        let _ = writeln!(
            svg,
            "<defs><marker id=\"{id}\" viewBox=\"0 0 10 10\" refX=\"9\" refY=\"5\" markerUnits=\"userSpaceOnUse\" markerWidth=\"10\" markerHeight=\"10\" orient=\"auto-start-reverse\"><path d=\"M0,0 L10,5 L0,10 z\" fill=\"{colour}\"/></marker></defs>"
        );
    }
    let _ = writeln!(
        svg,
        "<rect width=\"100%\" height=\"100%\" fill=\"#ffffff\"/>"
    );

    // Arrows first, so shapes sit on top of their ends.
    for route in &layout.routes {
        let edge = route.edge.map(|e| &map.edges[e]);
        let hot = edge.is_some_and(|e| e.bottleneck);
        let width = edge.map_or(1.5, |e| 1.0 + 4.0 * e.count as f64 / most);
        let colour = if hot { HOT } else { LINE };
        let points: Vec<String> = route
            .points
            .iter()
            .map(|(x, y)| format!("{x:.1},{y:.1}"))
            .collect();
        let dash = if route.back {
            " stroke-dasharray=\"6 4\""
        } else {
            ""
        };
        let _ = writeln!(
            svg,
            "<polyline points=\"{}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"{width:.1}\" stroke-linejoin=\"round\"{dash} marker-end=\"url(#{})\"/>",
            points.join(" "),
            if hot { "arrow-hot" } else { "arrow" }
        );
        if let Some(index) = route.edge {
            // The label sits on the middle of the longest segment.
            let (mut best, mut at) = (-1.0f64, (0.0, 0.0));
            for pair in route.points.windows(2) {
                let ((x1, y1), (x2, y2)) = (pair[0], pair[1]);
                let length = (x2 - x1).abs() + (y2 - y1).abs();
                if length > best {
                    best = length;
                    at = ((x1 + x2) / 2.0, (y1 + y2) / 2.0);
                }
            }
            let text = flow_name(map, index);
            let w = 6.8 * text.chars().count() as f64 + 10.0;
            let _ = writeln!(
                svg,
                "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{w:.1}\" height=\"16\" rx=\"3\" fill=\"#ffffff\" fill-opacity=\"0.9\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"11\" fill=\"{}\"{}>{}</text>",
                at.0 - w / 2.0,
                at.1 - 9.0,
                at.0,
                at.1 + 3.0,
                if hot { HOT } else { MUTED },
                if hot { " font-weight=\"600\"" } else { "" },
                escape(&text)
            );
        }
    }

    for placed in &layout.shapes {
        let (cx, cy) = placed.centre();
        match placed.shape {
            Shape::Split(_) | Shape::Join(_) => {
                let r = placed.w / 2.0;
                let _ = writeln!(
                    svg,
                    "<path d=\"M{cx:.1},{:.1} L{:.1},{cy:.1} L{cx:.1},{:.1} L{:.1},{cy:.1} z\" fill=\"#fefce8\" stroke=\"#a16207\" stroke-width=\"1.5\"/><path d=\"M{:.1},{:.1} L{:.1},{:.1} M{:.1},{:.1} L{:.1},{:.1}\" stroke=\"#a16207\" stroke-width=\"2.5\"/>",
                    cy - r,
                    cx + r,
                    cy + r,
                    cx - r,
                    cx - 8.0,
                    cy - 8.0,
                    cx + 8.0,
                    cy + 8.0,
                    cx + 8.0,
                    cy - 8.0,
                    cx - 8.0,
                    cy + 8.0
                );
            }
            Shape::Node(n) => {
                let node = &map.nodes[n];
                let label = node.label.clone();
                if is_event(node.kind) {
                    let r = placed.w / 2.0;
                    let (stroke, width, fill) = match node.kind {
                        NodeKind::Start => ("#15803d", 2.0, "#f0fdf4"),
                        NodeKind::Completed => ("#15803d", 4.0, "#f0fdf4"),
                        NodeKind::Failed => (HOT, 4.0, "#fef2f2"),
                        NodeKind::Terminated | NodeKind::ContinuedAsNew => (INK, 4.0, "#f3f4f6"),
                        _ => ("#1d4ed8", 1.5, "#eff6ff"),
                    };
                    let _ = writeln!(
                        svg,
                        "<circle cx=\"{cx:.1}\" cy=\"{cy:.1}\" r=\"{r:.1}\" fill=\"{fill}\" stroke=\"{stroke}\" stroke-width=\"{width}\"/>"
                    );
                    if matches!(node.kind, NodeKind::Timer | NodeKind::Signal) {
                        let _ = writeln!(
                            svg,
                            "<circle cx=\"{cx:.1}\" cy=\"{cy:.1}\" r=\"{:.1}\" fill=\"none\" stroke=\"{stroke}\" stroke-width=\"1\"/>",
                            r - 4.0
                        );
                        let glyph = if node.kind == NodeKind::Timer {
                            format!("<path d=\"M{cx:.1},{:.1} L{cx:.1},{cy:.1} L{:.1},{cy:.1}\" stroke=\"{stroke}\" stroke-width=\"1.5\" fill=\"none\"/>", cy - 8.0, cx + 6.0)
                        } else {
                            format!("<rect x=\"{:.1}\" y=\"{:.1}\" width=\"14\" height=\"10\" fill=\"none\" stroke=\"{stroke}\"/><path d=\"M{:.1},{:.1} L{cx:.1},{:.1} L{:.1},{:.1}\" fill=\"none\" stroke=\"{stroke}\"/>", cx - 7.0, cy - 5.0, cx - 7.0, cy - 5.0, cy + 1.0, cx + 7.0, cy - 5.0)
                        };
                        svg.push_str(&glyph);
                        svg.push('\n');
                    }
                    let mut y = placed.y + placed.h + 14.0;
                    for line in wrap(&label, 22) {
                        let _ = writeln!(
                            svg,
                            "<text x=\"{cx:.1}\" y=\"{y:.1}\" text-anchor=\"middle\" fill=\"{INK}\">{}</text>",
                            escape(&line)
                        );
                        y += 14.0;
                    }
                    if node.kind != NodeKind::Start {
                        let _ = writeln!(
                            svg,
                            "<text x=\"{cx:.1}\" y=\"{y:.1}\" text-anchor=\"middle\" font-size=\"11\" fill=\"{MUTED}\">{}</text>",
                            escape(&stats_line(node))
                        );
                    }
                } else {
                    let failing = node.failures > 0;
                    let _ = writeln!(
                        svg,
                        "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" rx=\"10\" fill=\"#ffffff\" stroke=\"{}\" stroke-width=\"1.5\"/>",
                        placed.x,
                        placed.y,
                        placed.w,
                        placed.h,
                        if failing { HOT } else { INK }
                    );
                    let kind = match node.kind {
                        NodeKind::Task => "person",
                        NodeKind::Child => "child",
                        NodeKind::Notification => "notify",
                        NodeKind::Update => "update",
                        _ => "activity",
                    };
                    let _ = writeln!(
                        svg,
                        "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" fill=\"{MUTED}\">{kind}</text>",
                        placed.x + 8.0,
                        placed.y + 14.0
                    );
                    let lines = wrap(&node.name, 18);
                    let mut y = cy - 6.0 - 7.0 * (lines.len() as f64 - 1.0);
                    for line in lines {
                        let _ = writeln!(
                            svg,
                            "<text x=\"{cx:.1}\" y=\"{y:.1}\" text-anchor=\"middle\" font-weight=\"600\" fill=\"{INK}\">{}</text>",
                            escape(&line)
                        );
                        y += 14.0;
                    }
                    let _ = writeln!(
                        svg,
                        "<text x=\"{cx:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"11\" fill=\"{MUTED}\">{}</text>",
                        placed.y + placed.h - 10.0,
                        escape(&stats_line(node))
                    );
                    let mut notes = Vec::new();
                    if node.failed_attempts > 0 {
                        notes.push(format!("{} retried", node.failed_attempts));
                    }
                    if node.failures > 0 {
                        notes.push(format!("{} failed", node.failures));
                    }
                    if node.escalations > 0 {
                        notes.push(format!("{} escalated", node.escalations));
                    }
                    if node.open > 0 {
                        notes.push(format!("{} waiting", node.open));
                    }
                    if !notes.is_empty() {
                        let _ = writeln!(
                            svg,
                            "<text x=\"{cx:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"11\" fill=\"{}\">{}</text>",
                            placed.y + placed.h + 14.0,
                            if failing { HOT } else { MUTED },
                            escape(&notes.join(" · "))
                        );
                    }
                }
            }
        }
    }
    svg.push_str("</svg>\n");
    svg
}

/// `"120× · 3.2 s"`: how often, and the median duration when there is one.
fn stats_line(node: &crate::mine::Node) -> String {
    match node.duration {
        Some(d) if !node.kind.is_end() && node.kind != NodeKind::Notification => {
            format!("{}× · {}", node.count, human_ms(d.median_ms))
        }
        _ => format!("{}×", node.count),
    }
}
