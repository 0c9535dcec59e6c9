export {
  createKafkaTransport,
  type KafkaExactlyOnceOptions,
  KafkaTransport,
  type KafkaTransportOptions,
  protocolErrorType,
} from './kafka-transport.js'
