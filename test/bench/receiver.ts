/**
 * The benchmark's OTLP receiver, in a process of their own (a collector runs elsewhere): prints
 * its gRPC endpoint, decodes and counts what it receives, and on SIGTERM prints the count of
 * export requests.
 */
import { OtlpReceiver } from '../helpers/otlpReceiver';

void OtlpReceiver.start(false).then((receiver) => {
  console.log(receiver.grpcEndpoint);
  process.on('SIGTERM', () => {
    console.log(`requests ${receiver.requests.grpc}`);
    process.exit(0);
  });
});
