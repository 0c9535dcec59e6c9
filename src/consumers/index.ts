export {
  createKafkaConsumerRunner,
  decodeHeaders,
  KafkaConsumerRunner,
  type KafkaConsumerRunnerOptions,
  type KafkaRecord,
} from './kafka-consumer-runner.js'
