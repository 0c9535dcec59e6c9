export {
  createKafkaConsumerRunner,
  DEFAULT_CONSUMER_BATCH_SIZE,
  decodeHeaders,
  KafkaConsumerRunner,
  type KafkaConsumerRunnerOptions,
  type KafkaRecord,
} from './kafka-consumer-runner.js'
