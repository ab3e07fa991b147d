// Opens BPMN files the way BPMN modelling tools do (bpmn-moddle is the model layer of
// bpmn-js and the Camunda Modeler) and fails on anything they would not display:
// parse errors, warnings (unknown elements or attributes, unresolved references), a
// flow node or sequence flow without a diagram shape or edge, a flow whose ends do not
// resolve, an edge with fewer than two waypoints.
//
//   node tests/bpmn/check.mjs FILE.bpmn...     (bpmn-moddle from NODE_PATH)
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const imported = await import(require.resolve("bpmn-moddle", { paths: (process.env.NODE_PATH || "").split(":") }));
const BpmnModdle = imported.default || imported.BpmnModdle;

let failed = false;
for (const file of process.argv.slice(2)) {
  const problems = [];
  const moddle = new BpmnModdle();
  let parsed;
  try {
    parsed = await moddle.fromXML(readFileSync(file, "utf8"));
  } catch (err) {
    console.log(`FAIL ${file}: does not parse: ${err.message}`);
    failed = true;
    continue;
  }
  const { rootElement: definitions, warnings } = parsed;
  for (const w of warnings) problems.push(`warning: ${w.message}`);
  const process_ = definitions.rootElements.find((e) => e.$type === "bpmn:Process");
  if (!process_) problems.push("no process");
  const diagram = (definitions.diagrams || [])[0];
  if (!diagram) problems.push("no diagram");
  const drawn = new Map();
  for (const el of (diagram && diagram.plane.planeElement) || []) {
    if (!el.bpmnElement) { problems.push(`${el.id} names no element`); continue; }
    drawn.set(el.bpmnElement.id, el);
  }
  if (diagram && diagram.plane.bpmnElement !== process_) problems.push("the plane does not show the process");
  const elements = (process_ && process_.flowElements) || [];
  let nodes = 0, flows = 0, gateways = 0;
  for (const el of elements) {
    const di = drawn.get(el.id);
    if (el.$type === "bpmn:SequenceFlow") {
      flows++;
      if (!el.sourceRef || !el.targetRef) problems.push(`${el.id}: an end does not resolve`);
      if (!di || di.$type !== "bpmndi:BPMNEdge") problems.push(`${el.id}: no diagram edge`);
      else if (!di.waypoint || di.waypoint.length < 2) problems.push(`${el.id}: fewer than two waypoints`);
    } else {
      nodes++;
      if (el.$type.endsWith("Gateway")) gateways++;
      if (!di || di.$type !== "bpmndi:BPMNShape" || !di.bounds) problems.push(`${el.id}: no diagram shape`);
      else if (!(di.bounds.width > 0 && di.bounds.height > 0)) problems.push(`${el.id}: an empty shape`);
    }
  }
  if (!elements.some((e) => e.$type === "bpmn:StartEvent")) problems.push("no start event");
  if (problems.length) {
    failed = true;
    console.log(`FAIL ${file}:\n  ${problems.join("\n  ")}`);
  } else {
    console.log(`ok   ${file}: ${nodes} flow nodes (${gateways} gateways), ${flows} sequence flows, all drawn`);
  }
}
process.exit(failed ? 1 : 0);
