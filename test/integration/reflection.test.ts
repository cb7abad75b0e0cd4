import assert from 'node:assert/strict';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';
import { useTestServer } from '../helpers/fixture';

const REFLECTION_PROTO = path.join(path.dirname(require.resolve('@grpc/reflection/package.json')), 'build/proto/grpc/reflection/v1/reflection.proto');

interface ReflectionResponse {
  list_services_response?: { service: { name: string }[] };
  file_descriptor_response?: { file_descriptor_proto: Buffer[] };
  error_response?: { error_message: string };
}

/** One request on the bidi ServerReflectionInfo stream, as generic tools (grpcurl, Postman) send it. */
function reflect(address: string, request: Record<string, string>): Promise<ReflectionResponse> {
  const definition = grpc.loadPackageDefinition(loadSync(REFLECTION_PROTO, { keepCase: true })) as unknown as {
    grpc: { reflection: { v1: { ServerReflection: grpc.ServiceClientConstructor } } };
  };
  const client = new definition.grpc.reflection.v1.ServerReflection(address, grpc.credentials.createInsecure());
  return new Promise((resolve, reject) => {
    const call = (client as unknown as { ServerReflectionInfo(): grpc.ClientDuplexStream<object, ReflectionResponse> }).ServerReflectionInfo();
    call.on('data', (res: ReflectionResponse) => {
      resolve(res);
      call.end();
      client.close();
    });
    call.on('error', (err) => {
      client.close();
      reject(err);
    });
    call.write(request);
  });
}

describe('gRPC server reflection', () => {
  const server = useTestServer();

  it('lists isogear.v1.GearsService and the health service', async () => {
    const res = await reflect(server().server.grpcAddress, { list_services: '' });
    const names = (res.list_services_response?.service ?? []).map((s) => s.name);
    assert.ok(names.includes('isogear.v1.GearsService'), JSON.stringify(names));
    assert.ok(names.includes('grpc.health.v1.Health'), JSON.stringify(names));
  });

  it('describes GearsService so a generic client can call it', async () => {
    const res = await reflect(server().server.grpcAddress, { file_containing_symbol: 'isogear.v1.GearsService' });
    const files = res.file_descriptor_response?.file_descriptor_proto ?? [];
    assert.ok(files.length > 0, JSON.stringify(res.error_response));
    const text = Buffer.concat(files.map((f) => Buffer.from(f))).toString('latin1');
    for (const rpc of ['Execute', 'Register', 'Release', 'Trigger', 'GetInterpreter', 'ListInterpreters', 'ListRegistrations']) {
      assert.ok(text.includes(rpc), `descriptor names ${rpc}`);
    }
  });
});
