// A small router: static and `:param` segments, 404, 405 with Allow, HEAD served by GET.
import type { Handler } from './types.ts';

/** One route as data. A route needs an identity unless it says `public: true`. */
export interface Route {
  method: string;
  pattern: string;
  handler: Handler;
  /** Served without credentials (health probes; metrics, which checks its own token). */
  public?: boolean;
}

/** The router's answer; `public` is true only when the route (for a 405: every route on that path) is public. */
export type Match =
  | { kind: 'found'; pattern: string; handler: Handler; params: Record<string, string>; public: boolean }
  | { kind: 'method-not-allowed'; pattern: string; allow: string; public: boolean }
  | { kind: 'not-found' };

interface Node {
  statics: Map<string, Node>;
  param: { name: string; node: Node } | undefined;
  // method → route, and the pattern for labels; set on the node where a route ends
  methods: Map<string, Route>;
  pattern: string | undefined;
  allow: string;
  allPublic: boolean;
}

const NOT_FOUND: Match = { kind: 'not-found' };
const MAX_SEGMENT_LENGTH = 1024;

function newNode(): Node {
  return {
    statics: new Map(),
    param: undefined,
    methods: new Map(),
    pattern: undefined,
    allow: '',
    allPublic: true,
  };
}

/** Builds a router from route data; lookups are a walk down a segment tree. */
export function createRouter(routes: readonly Route[]): (method: string, path: string) => Match {
  const root = newNode();
  for (const route of routes) addRoute(root, route);
  return function match(method: string, path: string): Match {
    const found = walk(root, path);
    if (found === undefined) return NOT_FOUND;
    const { node, params } = found;
    const pattern = node.pattern as string;
    // RFC 9110 §9.3.2: HEAD is GET without the body; serve it with the GET handler.
    const route = node.methods.get(method) ?? (method === 'HEAD' ? node.methods.get('GET') : undefined);
    if (route !== undefined) {
      return { kind: 'found', pattern, handler: route.handler, params, public: route.public === true };
    }
    // RFC 9110 §15.5.6: a 405 response carries Allow with the methods the resource supports.
    return { kind: 'method-not-allowed', pattern, allow: node.allow, public: node.allPublic };
  };
}

function addRoute(root: Node, route: Route): void {
  let node = root;
  for (const segment of splitPath(route.pattern)) {
    if (segment.startsWith(':')) {
      const name = segment.slice(1);
      if (node.param !== undefined && node.param.name !== name) {
        throw new Error(`Conflicting parameter names at ${route.pattern}: ${node.param.name} and ${name}`);
      }
      node.param ??= { name, node: newNode() };
      node = node.param.node;
    } else {
      let next = node.statics.get(segment);
      if (next === undefined) {
        next = newNode();
        node.statics.set(segment, next);
      }
      node = next;
    }
  }
  if (node.methods.has(route.method)) throw new Error(`Duplicate route: ${route.method} ${route.pattern}`);
  node.methods.set(route.method, route);
  node.pattern = route.pattern;
  node.allPublic &&= route.public === true;
  const methods = new Set(node.methods.keys());
  if (methods.has('GET')) methods.add('HEAD');
  methods.add('OPTIONS'); // answered by CORS
  node.allow = [...methods].sort().join(', ');
}

function splitPath(path: string): string[] {
  return path.split('/').filter((s) => s !== '');
}

function walk(root: Node, path: string): { node: Node; params: Record<string, string> } | undefined {
  // Origin-form only (RFC 9112 §3.2.1): '*', absolute-form and anything not starting with '/' name no route.
  if (path.charCodeAt(0) !== 47) return undefined;
  if (path.length === 1) return root.pattern === undefined ? undefined : { node: root, params: {} };
  const params: Record<string, string> = {};
  const node = descend(root, path, 1, params);
  return node === undefined ? undefined : { node, params };
}

/** Matches the segment at `start` and the rest: a static segment first, a parameter if the static one leads nowhere. */
function descend(node: Node, path: string, start: number, params: Record<string, string>): Node | undefined {
  let end = path.indexOf('/', start);
  if (end === -1) end = path.length;
  if (end === start) return undefined; // empty segment: '//' or a trailing slash (a different resource)
  const segment = path.slice(start, end);
  const last = end === path.length;
  const next = node.statics.get(segment);
  if (next !== undefined) {
    const found = last ? routeAt(next) : descend(next, path, end + 1, params);
    if (found !== undefined) return found;
  }
  const param = node.param;
  if (param === undefined || segment.length > MAX_SEGMENT_LENGTH) return undefined;
  let value: string;
  try {
    value = decodeURIComponent(segment);
  } catch {
    return undefined; // malformed percent-encoding cannot name any resource
  }
  const found = last ? routeAt(param.node) : descend(param.node, path, end + 1, params);
  if (found !== undefined) params[param.name] = value;
  return found;
}

function routeAt(node: Node): Node | undefined {
  return node.pattern === undefined ? undefined : node;
}
