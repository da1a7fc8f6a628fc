// A stand-in server for client tests: `service` (one of chronicle.js's
// `services`) on a real socket, its methods the given `handlers`; `more`:
// other [service, handlers] pairs on the same socket.

import grpc from '@grpc/grpc-js';

export async function standInServer(service, handlers, more = []) {
  const server = new grpc.Server();
  for (const [one, its] of [[service, handlers], ...more]) server.addService(one, its);
  const port = await new Promise((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (error, bound) =>
      error ? reject(error) : resolve(bound),
    ),
  );
  return { address: `127.0.0.1:${port}`, stop: () => server.forceShutdown() };
}
