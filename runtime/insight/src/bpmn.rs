//! A process map as BPMN 2.0 XML, with its diagram (BPMN DI), so modelling tools open
//! the process as it really runs.
//!
//! Steps become the matching BPMN elements: activities service tasks, human tasks user
//! tasks, children call activities, notifications send tasks, answered updates receive
//! tasks, timers and signal waits intermediate catch events; the ends end events (a
//! failure with an error definition, a termination with a terminate definition).
//! Exclusive gateways split and join where runs took different paths. Every flow is
//! named with how often it was taken and its share; counts and durations go into each
//! element's documentation. The diagram uses [`Layout`], which tools need to draw
//! anything at all.

use std::fmt::Write as _;

use crate::layout::{Layout, Shape};
use crate::mine::{human_ms, NodeKind, ProcessMap};

/// Escapes text for an XML attribute or element.
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Control characters are not allowed in XML 1.0 at all.
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// An XML name (NCName) made of `text`: letters, digits, `_`, `-`, `.`; others become `_`.
fn xml_name(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The id of placed shape `s`.
pub(crate) fn shape_id(map: &ProcessMap, shape: Shape) -> String {
    match shape {
        Shape::Node(n) => map.nodes[n].id.clone(),
        Shape::Split(n) => format!("split_{}", map.nodes[n].id),
        Shape::Join(n) => format!("join_{}", map.nodes[n].id),
    }
}

/// The name of a flow carrying map edge `edge`: `"12 · 40%"`, plus the median time for
/// a bottleneck.
pub(crate) fn flow_name(map: &ProcessMap, edge: usize) -> String {
    let e = &map.edges[edge];
    let mut name = format!("{} · {:.0}%", e.count, e.share * 100.0);
    if e.bottleneck {
        if let Some(elapsed) = e.elapsed {
            let _ = write!(name, " · {}", human_ms(elapsed.median_ms));
        }
    }
    name
}

/// What a node's documentation says: counts and durations.
fn documentation(map: &ProcessMap, node: usize) -> String {
    let n = &map.nodes[node];
    let mut doc = format!(
        "reached {} times in {} of {} runs",
        n.count, n.runs, map.runs
    );
    if let Some(d) = n.duration {
        let _ = write!(
            doc,
            "; duration median {}, p95 {}",
            human_ms(d.median_ms),
            human_ms(d.p95_ms)
        );
    }
    if let Some(w) = n.waiting {
        let _ = write!(
            doc,
            "; waiting for a person median {}, p95 {}",
            human_ms(w.median_ms),
            human_ms(w.p95_ms)
        );
    }
    if n.failed_attempts > 0 {
        let _ = write!(doc, "; {} failed attempts retried", n.failed_attempts);
    }
    if n.failures > 0 {
        let _ = write!(doc, "; {} failed", n.failures);
    }
    if n.escalations > 0 {
        let _ = write!(doc, "; {} escalations", n.escalations);
    }
    if n.open > 0 {
        let _ = write!(doc, "; {} runs waiting here now", n.open);
    }
    doc
}

/// Writes `map` as a BPMN 2.0 document with its diagram.
///
/// # Example
/// ```
/// # use cairn_insight::{bpmn, ProcessMap};
/// let map = ProcessMap::mine("loan", std::iter::empty::<&[cairn_core::journal::StoredEvent]>());
/// let xml = bpmn::to_xml(&map);
/// assert!(xml.contains("<bpmn:startEvent id=\"node0\""));
/// assert!(xml.contains("<bpmndi:BPMNShape"));
/// ```
pub fn to_xml(map: &ProcessMap) -> String {
    let layout = Layout::of(map);
    let process_id = format!("Process_{}", xml_name(&map.workflow_type));
    let flow_id = |r: usize| format!("flow{r}");
    let mut xml = String::new();
    xml.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        xml,
        "<bpmn:definitions xmlns:bpmn=\"http://www.omg.org/spec/BPMN/20100524/MODEL\" \
         xmlns:bpmndi=\"http://www.omg.org/spec/BPMN/20100524/DI\" \
         xmlns:dc=\"http://www.omg.org/spec/DD/20100524/DC\" \
         xmlns:di=\"http://www.omg.org/spec/DD/20100524/DI\" \
         id=\"Definitions_{}\" targetNamespace=\"urn:cairn:process-map\" \
         exporter=\"Cairn\" exporterVersion=\"{}\">",
        xml_name(&map.workflow_type),
        env!("CARGO_PKG_VERSION")
    );
    let _ = writeln!(
        xml,
        "  <bpmn:process id=\"{process_id}\" name=\"{}\" isExecutable=\"false\">",
        escape(&map.workflow_type)
    );
    let _ = writeln!(
        xml,
        "    <bpmn:documentation>Mined by Cairn from {} recorded runs ({} finished, {} distinct paths).</bpmn:documentation>",
        map.runs, map.finished, map.distinct_variants
    );
    for (s, placed) in layout.shapes.iter().enumerate() {
        let id = shape_id(map, placed.shape);
        let incoming: Vec<usize> = (0..layout.routes.len())
            .filter(|&r| layout.routes[r].to == s)
            .collect();
        let outgoing: Vec<usize> = (0..layout.routes.len())
            .filter(|&r| layout.routes[r].from == s)
            .collect();
        let (element, name, doc, definition) = match placed.shape {
            Shape::Split(_) => (
                "exclusiveGateway",
                String::new(),
                None,
                Some("gatewayDirection=\"Diverging\""),
            ),
            Shape::Join(_) => (
                "exclusiveGateway",
                String::new(),
                None,
                Some("gatewayDirection=\"Converging\""),
            ),
            Shape::Node(n) => {
                let node = &map.nodes[n];
                let element = match node.kind {
                    NodeKind::Start => "startEvent",
                    NodeKind::Activity => "serviceTask",
                    NodeKind::Task => "userTask",
                    NodeKind::Child => "callActivity",
                    NodeKind::Notification => "sendTask",
                    NodeKind::Update => "receiveTask",
                    NodeKind::Timer | NodeKind::Signal => "intermediateCatchEvent",
                    _ => "endEvent",
                };
                (
                    element,
                    node.label.clone(),
                    Some(documentation(map, n)),
                    None,
                )
            }
        };
        let _ = write!(xml, "    <bpmn:{element} id=\"{id}\"");
        if !name.is_empty() {
            let _ = write!(xml, " name=\"{}\"", escape(&name));
        }
        if let Some(attribute) = definition {
            let _ = write!(xml, " {attribute}");
        }
        if let Shape::Node(n) = placed.shape {
            if map.nodes[n].kind == NodeKind::Child {
                let _ = write!(xml, " calledElement=\"{}\"", escape(&map.nodes[n].name));
            }
        }
        xml.push_str(">\n");
        if let Some(doc) = doc {
            let _ = writeln!(
                xml,
                "      <bpmn:documentation>{}</bpmn:documentation>",
                escape(&doc)
            );
        }
        for r in incoming {
            let _ = writeln!(xml, "      <bpmn:incoming>{}</bpmn:incoming>", flow_id(r));
        }
        for r in outgoing {
            let _ = writeln!(xml, "      <bpmn:outgoing>{}</bpmn:outgoing>", flow_id(r));
        }
        if let Shape::Node(n) = placed.shape {
            let definition = match map.nodes[n].kind {
                NodeKind::Timer => Some("timerEventDefinition"),
                NodeKind::Signal => Some("messageEventDefinition"),
                NodeKind::Failed => Some("errorEventDefinition"),
                NodeKind::Terminated => Some("terminateEventDefinition"),
                _ => None,
            };
            if let Some(definition) = definition {
                let _ = writeln!(xml, "      <bpmn:{definition} id=\"{id}_definition\" />");
            }
        }
        let _ = writeln!(xml, "    </bpmn:{element}>");
    }
    for (r, route) in layout.routes.iter().enumerate() {
        let _ = write!(
            xml,
            "    <bpmn:sequenceFlow id=\"{}\" sourceRef=\"{}\" targetRef=\"{}\"",
            flow_id(r),
            shape_id(map, layout.shapes[route.from].shape),
            shape_id(map, layout.shapes[route.to].shape)
        );
        if let Some(edge) = route.edge {
            let _ = write!(xml, " name=\"{}\"", escape(&flow_name(map, edge)));
        }
        xml.push_str(" />\n");
    }
    xml.push_str("  </bpmn:process>\n");
    let _ = writeln!(
        xml,
        "  <bpmndi:BPMNDiagram id=\"Diagram_{0}\">\n    <bpmndi:BPMNPlane id=\"Plane_{0}\" bpmnElement=\"{process_id}\">",
        xml_name(&map.workflow_type)
    );
    for placed in &layout.shapes {
        let id = shape_id(map, placed.shape);
        let marker = if matches!(placed.shape, Shape::Split(_) | Shape::Join(_)) {
            " isMarkerVisible=\"true\""
        } else {
            ""
        };
        let _ = writeln!(
            xml,
            "      <bpmndi:BPMNShape id=\"{id}_di\" bpmnElement=\"{id}\"{marker}>\n        <dc:Bounds x=\"{:.0}\" y=\"{:.0}\" width=\"{:.0}\" height=\"{:.0}\" />\n      </bpmndi:BPMNShape>",
            placed.x, placed.y, placed.w, placed.h
        );
    }
    for (r, route) in layout.routes.iter().enumerate() {
        let _ = writeln!(
            xml,
            "      <bpmndi:BPMNEdge id=\"{0}_di\" bpmnElement=\"{0}\">",
            flow_id(r)
        );
        for (x, y) in &route.points {
            let _ = writeln!(xml, "        <di:waypoint x=\"{x:.0}\" y=\"{y:.0}\" />");
        }
        xml.push_str("      </bpmndi:BPMNEdge>\n");
    }
    xml.push_str("    </bpmndi:BPMNPlane>\n  </bpmndi:BPMNDiagram>\n</bpmn:definitions>\n");
    xml
}
