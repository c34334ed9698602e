// Minimal declarations for untyped bench dependencies (their @types packages are not worth pinning for a harness).
declare module 'express';
declare module 'cors';
declare module 'autocannon';
declare module '@portkey-ai/gateway/build/start-server.js';
